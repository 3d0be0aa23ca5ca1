"""StyleRecommender end to end on a tiny synthetic shop: red, blue and green products."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from doubles import ColourEncoder
from PIL import Image

from recsys.catalog import Catalog
from recsys.interactions import Interactions
from recsys.recommender import Slate, StyleRecommender

COLOURS = {"red": (220, 30, 30), "blue": (30, 40, 220), "green": (30, 200, 40)}


def _image(path: Path, rgb: tuple[int, int, int], shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = tuple(int(np.clip(c + shade, 0, 255)) for c in rgb)
    Image.new("RGB", (16, 24), colour).save(path)


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> dict:
    """12 products per colour (the last 2 of each colour never bought), 3 styles, 30 users."""
    root = tmp_path_factory.mktemp("shop")
    items = {}
    for colour, rgb in COLOURS.items():
        for j in range(12):
            item = f"{colour}{j:02d}"
            _image(root / "images" / colour[:1] / f"{item}.jpg", rgb, 6 * j - 30)
            items[item] = colour
    for colour, rgb in COLOURS.items():
        _image(root / "styles" / f"{colour}-style.jpg", rgb, 0)
    rng = np.random.default_rng(0)
    rows = []
    for u in range(30):
        colour = list(COLOURS)[u % 3]
        bought = rng.choice(10, size=5, replace=False)
        rows += [(f"user{u:02d}", f"{colour}{j:02d}", f"2020-01-{d + 1:02d}")
                 for d, j in enumerate(bought)]
        if u % 5 == 0:  # a few cross-colour purchases for CF to learn from
            rows.append((f"user{u:02d}", f"{list(COLOURS)[(u + 1) % 3]}00", "2020-02-01"))
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "t"])
    return {"root": root, "items": items,
            "data": Interactions.from_frame(frame, time_col="t"),
            "catalog": Catalog.from_directory(root / "images"),
            "styles": root / "styles"}


@pytest.fixture(scope="module")
def fitted(shop) -> StyleRecommender:
    model = StyleRecommender(
        "als", {"factors": 8, "iterations": 5, "random_state": 0}, encoder=ColourEncoder(grid=2),
        taste_params={"method": "kmeans", "items_per_centroid": 3}, blend=0.7, ranker="blend",
        ranker_params={"n_cf_candidates": 10, "n_taste_candidates": 10})
    return model.fit(shop["data"], shop["catalog"], shop["styles"])


def _colour(shop: dict, slate: Slate) -> list[str]:
    return [shop["items"][i] for i in slate.item_ids]


def test_known_user_gets_unseen_items_in_their_colour_and_style(shop, fitted):
    slates = fitted.recommend(["user01", "user03"], k=5)
    assert [s.user_id for s in slates] == ["user01", "user03"]
    for slate, colour in zip(slates, ["blue", "red"], strict=True):
        assert len(slate.entries) == 5
        assert _colour(shop, slate)[:3] == [colour] * 3
        bought = set(shop["data"].user_history(slate.user_id)["item_id"])
        assert not bought & set(slate.item_ids)
        assert slate.style.style_id == f"{colour}-style"
        assert Path(slate.style.path).name == f"{colour}-style.jpg"
        assert not (slate.fallback or slate.folded_in or slate.taste_fallback)
        scores = [e.score for e in slate.entries]
        assert scores == sorted(scores, reverse=True)
        for e in slate.entries:
            assert e.score == pytest.approx(0.3 * e.cf + 0.7 * e.taste, abs=1e-5)
            assert not e.group


def test_cold_items_can_be_recommended(shop, fitted):
    slate = fitted.recommend(["user02"], k=12)[0]  # a green shopper
    cold = {e.item_id for e in slate.entries if e.cold}
    assert cold and cold <= {"green10", "green11", "red10", "red11", "blue10", "blue11"}
    assert {"green10", "green11"} & cold


def test_item_groups_bring_in_siblings_of_bought_items(shop):
    groups = {item: f"{colour}-{int(item[-2:]) // 2}" for item, colour in shop["items"].items()}
    model = StyleRecommender(
        encoder=ColourEncoder(grid=2), cf_params={"factors": 4, "iterations": 2}, blend=0.5,
        ranker="blend",
        ranker_params={"group_weight": 5.0, "n_cf_candidates": 2, "n_taste_candidates": 2})
    model.fit(shop["data"], shop["catalog"], item_groups=groups)
    slate = model.recommend(["user04"], k=3)[0]
    bought = set(shop["data"].user_history("user04")["item_id"])
    siblings = {i for i in shop["items"] if groups[i] in {groups[b] for b in bought}} - bought
    assert siblings and all(e.group for e in slate.entries[: len(siblings)])
    assert {e.item_id for e in slate.entries if e.group} <= siblings
    assert "same-family" in slate.explain()


def test_unknown_user_without_history_gets_the_popularity_fallback(fitted):
    slate = fitted.recommend(["stranger"], k=4)[0]
    assert slate.fallback and slate.taste_fallback and not slate.folded_in
    assert len(slate.entries) == 4 and slate.style is not None


def test_new_user_is_folded_in_from_history(shop, fitted):
    history = Interactions.from_frame(pd.DataFrame({
        "user_id": ["newbie"] * 3, "item_id": ["blue01", "blue02", "blue03"],
        "t": ["2020-03-01", "2020-03-02", "2020-03-03"]}), time_col="t")
    slate = fitted.recommend(["newbie"], k=5, history=history)[0]
    assert slate.folded_in and not slate.fallback and not slate.taste_fallback
    assert not {"blue01", "blue02", "blue03"} & set(slate.item_ids)
    assert _colour(shop, slate)[:3] == ["blue"] * 3
    assert slate.style.style_id == "blue-style"


def test_mixed_batch_matches_single_requests(fitted):
    users = ["user03", "stranger", "user04"]
    batch = fitted.recommend(users, k=6)
    for user, slate in zip(users, batch, strict=True):
        alone = fitted.recommend([user], k=6)[0]
        assert alone.item_ids == slate.item_ids  # scores agree to float rounding
        np.testing.assert_allclose([e.score for e in alone.entries],
                                   [e.score for e in slate.entries], rtol=1e-5, atol=1e-6)
        assert (alone.fallback, alone.style.style_id) == (slate.fallback, slate.style.style_id)


def test_save_load_round_trip_gives_identical_slates(tmp_path, fitted):
    users = [f"user{u:02d}" for u in range(30)] + ["stranger"]
    path = fitted.save(tmp_path / "model")
    loaded = StyleRecommender.load(path)
    assert loaded.recommend(users, k=8) == fitted.recommend(users, k=8)
    assert loaded.encoder_id_ == fitted.encoder_id_
    fitted.save(path)  # replacing an existing save works
    assert StyleRecommender.load(path).recommend(users[:2], k=3) == fitted.recommend(
        users[:2], k=3)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_recommend_is_thread_safe(fitted):
    users = [f"user{u:02d}" for u in range(30)] + ["stranger"]
    serial = [fitted.recommend([u], k=5)[0] for u in users]
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(lambda u: fitted.recommend([u], k=5)[0], users * 3))
    assert threaded == serial * 3


def test_to_dict_is_json_and_explain_names_the_parts(fitted):
    slate = fitted.recommend(["user05"], k=3)[0]
    data = json.loads(json.dumps(slate.to_dict()))
    assert data["user_id"] == "user05" and len(data["entries"]) == 3
    assert set(data["entries"][0]) == {"item_id", "score", "cf", "taste", "cold", "group",
                                       "image", "image_error", "reasons"}
    assert data["style"]["style_id"].endswith("-style")
    text = slate.explain()
    assert text.startswith("user user05; style") and "cf" in text and "taste" in text
    assert len(text.splitlines()) == 4


def test_embedding_dim_projects_items_and_styles(tmp_path, shop):
    model = StyleRecommender(encoder=ColourEncoder(grid=2), embedding_dim=4,
                             cf_params={"factors": 4, "iterations": 2}, blend=0.9,
                             ranker="blend")
    model.fit(shop["data"], shop["catalog"], shop["styles"])
    assert model.ranker_.item_vectors_.shape == (36, 4)
    slate = model.recommend(["user02"], k=3)[0]
    assert slate.style.style_id == "green-style" and _colour(shop, slate) == ["green"] * 3
    loaded = StyleRecommender.load(model.save(tmp_path / "model"))
    assert loaded.recommend(["user02"], k=3) == [slate]
    raw = StyleRecommender(encoder=ColourEncoder(grid=2), embedding_dim=None,
                           cf_params={"factors": 4, "iterations": 2})
    assert raw.fit(shop["data"], shop["catalog"]).pca_ is None
    assert raw.ranker_.item_vectors_.shape == (36, 12)


def test_embedding_cache_is_reused(tmp_path, shop):
    from recsys.embedding_store import EmbeddingStore

    params = {"encoder": ColourEncoder(grid=2), "cache_dir": tmp_path / "cache",
              "cf_params": {"factors": 4, "iterations": 2}}
    first = StyleRecommender(**params).fit(shop["data"], shop["catalog"])
    store = EmbeddingStore(tmp_path / "cache", ColourEncoder(grid=2))
    assert len(store) == len(shop["catalog"])
    second = StyleRecommender(**params).fit(shop["data"], shop["catalog"])
    np.testing.assert_array_equal(first.taste_.item_vectors_, second.taste_.item_vectors_)
    assert first.recommend(["user07"], k=4)[0].style is None


def test_unreadable_images_are_reported_and_skipped(tmp_path, shop):
    root = tmp_path / "images"
    for item in ["red00", "red01", "blue00"]:
        _image(root / f"{item}.jpg", COLOURS[item.rstrip("0123456789")], 0)
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    model = StyleRecommender(encoder=ColourEncoder(grid=2), cf_params={"factors": 2,
                                                                    "iterations": 1})
    model.fit(shop["data"], Catalog.from_directory(root))
    assert list(model.failures_) == ["broken"]
    assert set(model.ranker_.item_ids_) == {"red00", "red01", "blue00"}


def test_render_on_request_with_the_color_styler(tmp_path, shop, fitted):
    from stylers import Renderer, create_styler

    renderer = Renderer(create_styler("color"), tmp_path / "renders", device="cpu",
                        max_side=32, style_side=32, progress=False)
    model = StyleRecommender.load(fitted.save(tmp_path / "model"), renderer=renderer)
    plain, rendered = model.recommend(["user01", "user02"], k=3), model.recommend(
        ["user01", "user02"], k=3, render=True)
    assert [s.item_ids for s in rendered] == [s.item_ids for s in plain]
    for slate in rendered:
        for entry in slate.entries:
            image = Image.open(entry.image)
            assert Path(entry.image).is_relative_to(tmp_path / "renders")
            assert image.size == (16, 24)  # max_side only ever downscales
    # a blue shopper's items rendered in the blue style stay blue
    pixels = np.asarray(Image.open(rendered[0].entries[0].image).convert("RGB"), float)
    assert pixels[..., 2].mean() > pixels[..., 0].mean()
    assert renderer.stats["rendered"] == 6
    model.recommend(["user01"], k=3, render=True)
    assert renderer.stats["rendered"] == 6  # served from the render cache


def test_errors_are_clear(shop, fitted):
    with pytest.raises(RuntimeError, match="not fitted"):
        StyleRecommender().recommend(["user00"])
    with pytest.raises(TypeError, match="batch-first"):
        fitted.recommend("user00")
    with pytest.raises(ValueError, match="render=True needs a renderer"):
        fitted.recommend(["user00"], render=True)
    with pytest.raises(TypeError, match="catalog must be a Catalog"):
        StyleRecommender(encoder=ColourEncoder(grid=2)).fit(shop["data"], shop["root"])
    with pytest.raises(FileNotFoundError, match="no saved StyleRecommender"):
        StyleRecommender.load(shop["root"])


@pytest.mark.slow
def test_demo_data_end_to_end_with_the_real_encoder(tmp_path, demo_dir):
    """EfficientNet-Lite0 on the bundled demo shop: fit, recommend, fold in, save, load."""
    from recsys.interactions import load_interactions

    data = load_interactions(demo_dir / "transactions.csv")
    catalog = Catalog.from_directory(demo_dir / "images")
    model = StyleRecommender(
        "als", {"factors": 16, "iterations": 5}, cache_dir=tmp_path / "cache",
        taste_params={"method": "kmeans", "half_life_days": 14}, blend=0.5, ranker="blend",
        ranker_params={"affinity": "softmax", "group_weight": 1.0, "index_factory": "HNSW32"})
    model.fit(data, catalog, demo_dir / "styles",
              item_groups={i: i[:7] for i in catalog.item_ids})
    users = list(data.user_ids[:20])
    slates = model.recommend(users, k=10)
    assert all(len(s.entries) == 10 and s.style is not None for s in slates)
    loaded = StyleRecommender.load(model.save(tmp_path / "model"))
    assert loaded.recommend(users, k=10) == slates
    history = Interactions.from_frame(pd.DataFrame({
        "user_id": ["new"] * 2, "item_id": list(catalog.item_ids[:2]),
        "t": ["2020-09-01", "2020-09-02"]}), time_col="t")
    assert loaded.recommend(["new"], k=5, history=history)[0].folded_in


def test_history_of_items_the_cf_model_never_saw_gets_the_flagged_fallback(shop, fitted):
    """Issue 15 (7): a new user who bought only cold items got arbitrary CF scores of 0."""
    history = Interactions.from_frame(pd.DataFrame({"user_id": ["newbie"] * 2,
                                                    "item_id": ["red10", "red11"]}))
    slate = fitted.recommend(["newbie"], k=5, history=history)[0]
    assert slate.fallback and not slate.folded_in and not slate.taste_fallback
    assert not {"red10", "red11"} & set(slate.item_ids)  # what they have is still excluded
    assert _colour(shop, slate).count("red") >= 4  # the taste of their history still counts


def test_a_bad_style_folder_fails_before_any_image_is_encoded(tmp_path, shop, monkeypatch):
    model = StyleRecommender(encoder=ColourEncoder(grid=2))
    monkeypatch.setattr(model, "_make_encoder", lambda: pytest.fail("encoded first"))
    with pytest.raises(NotADirectoryError, match="image folder not found: .*nope"):
        model.fit(shop["data"], shop["catalog"], tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images .* under .*empty"):
        model.fit(shop["data"], shop["catalog"], tmp_path / "empty")


def test_missing_changed_or_escaping_images_skip_their_render_only(tmp_path, shop):
    """Issue 15: item paths are re-checked when rendering; one bad image skips one render."""
    import shutil

    from stylers import Renderer, create_styler

    shutil.copytree(shop["root"] / "images", tmp_path / "images")
    model = StyleRecommender(
        "als", {"factors": 8, "iterations": 5, "random_state": 0}, encoder=ColourEncoder(grid=2),
        ranker_params={"n_cf_candidates": 10, "n_taste_candidates": 10})
    model.fit(shop["data"], Catalog.from_directory(tmp_path / "images"), shop["styles"])
    renderer = Renderer(create_styler("color"), tmp_path / "renders", device="cpu",
                        max_side=32, style_side=32, progress=False)
    model = StyleRecommender.load(model.save(tmp_path / "model"), renderer=renderer)
    first = model.recommend(["user01"], k=4)[0].item_ids
    missing, changed, escaping, fine = (model.item_paths_[i] for i in first)
    Path(missing).unlink()
    _image(Path(changed), (0, 0, 0), 0)
    _image(tmp_path / "outside.jpg", COLOURS["blue"], 0)
    Path(escaping).unlink()
    Path(escaping).symlink_to(tmp_path / "outside.jpg")
    slate = model.recommend(["user01"], k=4, render=True)[0]
    assert slate.item_ids == first
    errors = [e.image_error for e in slate.entries]
    assert "is missing" in errors[0] and "changed since the model was fitted" in errors[1]
    assert "resolves outside" in errors[2] and errors[3] is None
    assert [e.image is None for e in slate.entries] == [True, True, True, False]
    assert Image.open(slate.entries[3].image).size == (16, 24)
    assert "not rendered: " in slate.explain() and renderer.stats["rendered"] == 1


@pytest.mark.parametrize("damaged", ["cf/arrays.npz", "styles/index.faiss", "arrays.npz",
                                     "recommender.json", "foreign cf/arrays.npz"])
def test_truncated_or_foreign_files_are_named_on_load(tmp_path, fitted, damaged):
    path = fitted.save(tmp_path / "model")
    target = path / damaged.removeprefix("foreign ")
    if damaged.startswith("foreign"):
        np.savez(target, weights=np.ones(3))
    else:
        target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])
    with pytest.raises(ValueError, match="damaged|does not match"):
        StyleRecommender.load(path)


def test_a_pipeline_save_refuses_a_folder_of_user_files(tmp_path, fitted):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="no saved model \\(recommender.json missing\\)"):
        fitted.save(tmp_path / "mine")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
