"""The pipeline spec: JSON round trip, errors that name the key, overrides, and the
facade, the CLI and evaluation reading it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from doubles import ColourEncoder
from PIL import Image

from evaluation.runner import build_model
from recsys.catalog import Catalog
from recsys.interactions import Interactions
from recsys.recommender import StyleRecommender
from recsys.spec import (
    ComponentSpec,
    PipelineSpec,
    SpecError,
    apply_overrides,
    load_spec,
    recommender_arguments,
)
from stylerec.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.json"


def test_the_demo_spec_round_trips_through_json():
    spec = load_spec(DEMO)
    assert spec.cf == ComponentSpec("als", {"factors": 64, "iterations": 15, "random_state": 0})
    assert spec.renderer.protect == {"product_strength": 0.3} and spec.styler.name == "arbitrary"
    again = PipelineSpec.from_dict(json.loads(spec.to_json()))
    assert again == spec and again.to_dict() == spec.to_dict()


@pytest.mark.parametrize(("data", "message"), [
    ({"cf": {"name": "als", "params": {"factors": "x"}}},
     "cf.params.factors: expected int, got 'x'"),
    ({"cf": {"name": "svd"}}, "cf.name: unknown model 'svd'; available: als"),
    ({"cf": {"name": "als", "params": {"factorz": 3}}},
     "cf.params.factorz: unknown parameter; known: factors"),
    ({"cf": {"params": {}}}, "cf.name: required"),
    ({"ranker": {"name": "blend", "params": {"taste_weight": "high"}}},
     "ranker.params.taste_weight: expected float, got 'high'"),
    ({"ranker": {"name": "lightgbm"}}, "ranker.name: unknown ranker 'lightgbm'"),
    ({"sources": [{"name": "repurchase"}]}, "sources: name candidate sources in ranker.params"),
    ({"ranker": {"name": "learned", "params": {"sources": [{"name": "repurchse"}]}}},
     "ranker.params.sources.0.name: unknown candidate source 'repurchse'"),
    ({"ranker": {"name": "learned", "params": {"n_candidates": "many"}}},
     "ranker.params.n_candidates: expected int, got 'many'"),
    ({"encoder": {"nmae": "x"}}, "encoder.nmae: unknown key; known: name, params"),
    ({"data": {"images": "img"}, "encoder": {"name": "nope"}},
     "encoder.name: unknown encoder 'nope'"),
    ({"data": {"images": "img"}, "encoder": {"params": {"fit": 3}}},
     "encoder.params.fit: expected str, got 3"),
    ({"taste": {"method": 1}}, "taste.method: expected str, got 1"),
    ({"data": {"group_columns": "article_id"}}, "data.group_columns: expected a list"),
    ({"data": {"item_groups": "prefix:x"}}, "data.item_groups: write 'prefix:K'"),
    ({"styler": {"name": "color", "params": {"strength": "full"}}},
     "styler.params.strength: expected float, got 'full'"),
    ({"styler": {"name": "color"}, "renderer": {"protect": {"product_strength": [1]}}},
     "renderer.protect.product_strength: expected float"),
    ({"version": 2}, "version: this stylerec reads pipeline spec version 1, got 2"),
])
def test_errors_name_the_key(data, message):
    with pytest.raises(SpecError) as err:
        PipelineSpec.from_dict(data).validate()
    assert str(err.value).startswith(message)


def test_overrides_set_nested_keys_list_items_and_parse_json():
    data = {"cf": {"name": "als", "params": {}}, "sources": [{"name": "a", "params": {}}]}
    out = apply_overrides(data, ["cf.params.factors=8", "cf.name=bpr", "sources.0.params.k=5",
                                 "styler.name=color", "encoder.params.fit=crop"])
    assert out["cf"] == {"name": "bpr", "params": {"factors": 8}}
    assert out["sources"][0]["params"] == {"k": 5} and out["styler"] == {"name": "color"}
    assert out["encoder"] == {"params": {"fit": "crop"}}
    assert data["cf"]["params"] == {}  # the input is not modified
    with pytest.raises(SpecError, match="KEY.PATH=VALUE"):
        apply_overrides(data, ["cf.params.factors"])
    with pytest.raises(SpecError, match=r"sources\.3: not an index of a 1-item list"):
        apply_overrides(data, ["sources.3.name=x"])


def test_from_params_and_get_params_round_trip():
    spec = load_spec(DEMO, ["styler=null", "taste.method=centroids", "encoder.whiten=false"])
    model = StyleRecommender.from_params(spec)
    assert model.cf_params == spec.cf.params and model.blend == 0.5 and not model.whiten
    assert model.ranker_params == {"group_weight": 0.5} and model.renderer is None
    assert model.get_params() == spec.to_dict()
    assert StyleRecommender.from_params(model.get_params()).get_params() == spec.to_dict()
    model.blend = 0.25  # the model sections follow the live parameters
    assert model.get_params()["ranker"]["params"]["taste_weight"] == 0.25


def test_the_saved_model_stores_its_spec(tmp_path):
    colours = {"r": (220, 30, 30), "b": (30, 40, 220)}
    for c, rgb in colours.items():
        for j in range(4):
            Image.new("RGB", (16, 16), tuple(v + 5 * j for v in rgb)).save(tmp_path / f"{c}{j}.png")
    rows = [(f"{c}-user{u}", f"{c}{j}") for c in colours for u in range(3) for j in range(3)]
    data = Interactions.from_frame(pd.DataFrame(rows, columns=["user_id", "item_id"]))
    model = StyleRecommender("popularity", encoder=ColourEncoder(grid=2), embedding_dim=None,
                             blend=0.7, ranker="blend").fit(data, Catalog.from_directory(tmp_path))
    saved = json.loads((model.save(tmp_path / "model") / "recommender.json").read_text())
    assert saved["spec"]["cf"] == {"name": "popularity", "params": {}}
    assert saved["spec"]["encoder"]["name"] == "test-colour"
    assert saved["spec"]["encoder"]["params"] == {"grid": 2}
    assert saved["spec"]["ranker"]["params"]["taste_weight"] == 0.7
    loaded = StyleRecommender.load(tmp_path / "model")
    assert loaded.get_params()["ranker"] == saved["spec"]["ranker"]
    np.testing.assert_array_equal(loaded.recommend(["r-user0"], k=3)[0].item_ids,
                                  model.recommend(["r-user0"], k=3)[0].item_ids)


def test_cli_fit_reads_a_spec_and_reports_the_bad_key(demo_dir, tmp_path, capsys):
    spec = tmp_path / "cf.json"
    spec.write_text(json.dumps({"data": {"interactions": str(demo_dir / "transactions.csv")},
                                "cf": {"name": "popularity"}}))
    assert main(["fit", "--config", str(spec), "--out", str(tmp_path / "pop")]) == 0
    assert json.loads((tmp_path / "pop" / "model.json").read_text())["model"] == "popularity"
    assert main(["fit", "--config", str(spec), "--set", "cf.name=als",
                 "--set", "cf.params.factors=x", "--out", str(tmp_path / "als")]) == 2
    assert "cf.params.factors: expected int, got 'x'" in capsys.readouterr().err


def test_an_evaluation_config_can_name_a_pipeline_spec():
    model = build_model("pipeline", {"pipeline": str(DEMO), "cf.params.factors": 8,
                                     "ranker.params.taste_weight": 0.25})
    expected = recommender_arguments(load_spec(DEMO, ["cf.params.factors=8"]))
    assert model.blend == 0.25 and model.options["cf_params"] == expected["cf_params"]
    assert model.images == "data/images" and model.groups == "data/articles.csv"


def test_the_demo_builds_from_its_spec(demo_dir, tmp_path):
    import shutil

    from stylerec.demo import run_demo

    data = tmp_path / "data"
    log = pd.read_csv(demo_dir / "transactions.csv", dtype=str)
    small = log[log["customer_id"].isin(log["customer_id"].drop_duplicates().iloc[:4])]
    (data / "styles").mkdir(parents=True)
    small.to_csv(data / "transactions.csv", index=False)
    shutil.copy(demo_dir / "articles.csv", data / "articles.csv")
    for item in small["article_id"].unique():
        (data / "images" / item[:3]).mkdir(parents=True, exist_ok=True)
        shutil.copy(demo_dir / "images" / item[:3] / f"{item}.jpg", data / "images" / item[:3])
    for name in ("wave", "mondrian"):
        shutil.copy(demo_dir / "styles" / f"{name}.jpg", data / "styles")
    page = run_demo(data, tmp_path / "out", n_customers=1, k=3, seed=7,
                    overrides=["styler=null", "encoder.embedding_dim=8"])
    assert page.is_file() and "style references" in page.read_text()
    spec = json.loads((tmp_path / "out" / "model" / "recommender.json").read_text())["spec"]
    assert spec["cf"]["params"] == {"factors": 64, "iterations": 15, "random_state": 7}
    assert spec["ranker"]["params"] == {"taste_weight": 0.5, "group_weight": 0.5}
    assert spec["data"]["images"] == str(data / "images") and spec["styler"] is None
    assert (tmp_path / "out" / "cache" / "embeddings").is_dir()


def test_the_learned_ranker_is_the_default_and_round_trips_through_the_spec():
    assert PipelineSpec().ranker.name == "learned"
    spec = PipelineSpec.from_dict({"ranker": {"name": "learned", "params": {
        "n_candidates": 20, "sources": [{"name": "repurchase"}]}}}).validate()
    model = StyleRecommender.from_params(spec.to_dict())
    assert model.ranker == "learned"
    assert model.learned_params == {"n_candidates": 20, "sources": [{"name": "repurchase"}]}
    assert model.get_params()["ranker"] == spec.to_dict()["ranker"]


def test_item_groups_by_id_prefix_cover_the_catalog_and_the_log(tmp_path, monkeypatch):
    from recsys.spec import fit_pipeline

    (tmp_path / "images").mkdir()
    for item in ("ab1", "ab9", "cd1"):  # ab9: in the catalog, never bought
        Image.new("RGB", (8, 8)).save(tmp_path / "images" / f"{item}.png")
    pd.DataFrame({"customer_id": ["u", "u", "v"], "article_id": ["ab1", "cd1", "xy5"],
                  "t_dat": ["2020-01-01"] * 3}).to_csv(tmp_path / "t.csv", index=False)
    seen = {}

    def fake_fit(self, interactions, catalog, styles=None, item_groups=None):
        seen["groups"] = item_groups
        return self

    monkeypatch.setattr(StyleRecommender, "fit", fake_fit)
    spec = PipelineSpec.from_dict({"data": {
        "interactions": str(tmp_path / "t.csv"), "images": str(tmp_path / "images"),
        "item_groups": "prefix:2"}})
    fit_pipeline(spec)
    assert seen["groups"] == {"ab1": "ab", "ab9": "ab", "cd1": "cd", "xy5": "xy"}
