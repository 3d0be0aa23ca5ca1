"""The HTTP service on a tiny synthetic shop (red, blue and green products): every endpoint,
every error, online updates, model reload, and the real server process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from doubles import ColourEncoder
from fastapi.testclient import TestClient
from PIL import Image
from test_recommender import COLOURS

from recsys.catalog import Catalog
from recsys.feedback import Event, FeedbackLog
from recsys.interactions import Interactions
from recsys.recommender import StyleRecommender
from stylerec.service import Limits, create_app

REPO = Path(__file__).resolve().parents[1]


def _image(path: Path, rgb: tuple[int, int, int], shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 24), tuple(int(np.clip(c + shade, 0, 255)) for c in rgb)).save(path)


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> dict:
    """10 products per colour, 3 styles, 24 shoppers who each buy one colour."""
    root = tmp_path_factory.mktemp("shop")
    colour_of = {}
    for colour, rgb in COLOURS.items():
        for j in range(10):
            _image(root / "images" / f"{colour}{j:02d}.jpg", rgb, 6 * j - 30)
            colour_of[f"{colour}{j:02d}"] = colour
        _image(root / "styles" / f"{colour}-style.jpg", rgb, 0)
    rng = np.random.default_rng(0)
    rows = [(f"user{u:02d}", f"{list(COLOURS)[u % 3]}{j:02d}", f"2020-01-{d + 1:02d}")
            for u in range(24) for d, j in enumerate(rng.choice(8, size=4, replace=False))]
    data = Interactions.from_frame(pd.DataFrame(rows, columns=["user_id", "item_id", "t"]),
                                   time_col="t")
    model = StyleRecommender(
        "als", {"factors": 8, "iterations": 5, "random_state": 0}, encoder=ColourEncoder(grid=2),
        embedding_dim=None, blend=0.7,
        ranker_params={"n_cf_candidates": 10, "n_taste_candidates": 10})
    model.fit(data, Catalog.from_directory(root / "images"), root / "styles")
    model.save(root / "model")
    return {"root": root, "model_dir": root / "model", "colour": colour_of, "data": data,
            "model": model}


def _renderer(tmp_path: Path):
    from stylers import Renderer, create_styler

    return Renderer(create_styler("color"), tmp_path / "renders", device="cpu", max_side=32,
                    style_side=32, image_format="jpg", progress=False)


@pytest.fixture()
def client(shop, tmp_path):
    app = create_app(shop["model_dir"], tmp_path / "feedback.db", renderer=_renderer(tmp_path),
                     limits=Limits(max_k=20, max_events=5, max_body_bytes=2000))
    with TestClient(app) as c:
        yield c


def _colours(shop: dict, items: list[str]) -> list[str]:
    return [shop["colour"][i] for i in items]


# -- /recommend -----------------------------------------------------------------------


def test_recommend_has_cornacs_shape_score_parts_urls_and_style(shop, client):
    r = client.get("/recommend", params={"uid": "user01", "k": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["query"] == {"uid": "user01", "k": 5, "remove_seen": True}
    expected = shop["model"].recommend(["user01"], k=5)[0]
    assert body["recommendations"] == expected.item_ids
    assert _colours(shop, body["recommendations"])[:3] == ["blue"] * 3
    bought = set(shop["data"].user_history("user01")["item_id"])
    assert not bought & set(body["recommendations"])
    for item, entry in zip(body["items"], expected.entries, strict=True):
        assert item["item"] == entry.item_id
        assert item["score"] == pytest.approx(0.3 * item["cf"] + 0.7 * item["taste"], abs=1e-4)
        assert item["render_url"] == f"/render/user01/{entry.item_id}"
        expected_image = (item["render_url"] if body["variant"] == "styled"
                          else f"/image/{entry.item_id}")
        assert item["image_url"] == expected_image
    assert body["style"]["id"] == "blue-style"
    assert body["fallback"] is False and body["folded_in"] is False
    assert body["variant"] in ("styled", "plain")
    assert len(body["model_version"]) == 12


def test_unknown_shopper_gets_the_flagged_popularity_fallback(client):
    body = client.get("/recommend", params={"uid": "nobody"}).json()
    assert body["fallback"] is True and len(body["recommendations"]) == 10


def test_variants_are_deterministic_and_both_arms_are_used(client):
    arms = {u: client.get("/recommend", params={"uid": f"user{u:02d}", "k": 1}).json()["variant"]
            for u in range(24)}
    again = {u: client.get("/recommend", params={"uid": f"user{u:02d}", "k": 1}).json()["variant"]
             for u in range(24)}
    assert arms == again and set(arms.values()) == {"styled", "plain"}


@pytest.mark.parametrize(("params", "status", "message"), [
    ({}, 400, "uid is required"),
    ({"uid": "user01", "k": 0}, 400, "k must be from 1 to 20"),
    ({"uid": "user01", "k": 21}, 400, "k must be from 1 to 20"),
    ({"uid": "user01", "k": "ten"}, 400, "k: "),
    ({"uid": "x" * 129}, 400, "the limit is 128"),
    ({"uid": "a\tb"}, 400, "printable"),
    ({"uid": "user01", "remove_seen": "false"}, 400, "remove_seen=false is not supported"),
    ({"uid": "user01", "remove_seen": "maybe"}, 400, "remove_seen"),
])
def test_recommend_rejects_bad_input_with_400_json(client, params, status, message):
    r = client.get("/recommend", params=params)
    assert r.status_code == status
    assert message in r.json()["error"]


# -- /explain, /render, /image -------------------------------------------------------


def test_explain_gives_rank_parts_sources_and_similar_history(shop, client):
    slate = client.get("/recommend", params={"uid": "user01", "k": 3}).json()
    top = slate["items"][0]
    body = client.get("/explain", params={"uid": "user01", "item": top["item"]}).json()
    assert body["rank"] == 1 and body["score"] == top["score"] and body["cf"] == top["cf"]
    assert "taste" in body["sources"] and body["seen"] is False
    assert body["style"]["id"] == "blue-style"
    assert body["similar_history"] and all(
        shop["colour"][s["item"]] == "blue" for s in body["similar_history"])
    bought = shop["data"].user_history("user01")["item_id"].iloc[0]
    seen = client.get("/explain", params={"uid": "user01", "item": bought}).json()
    assert seen["seen"] is True and seen["rank"] is None


def test_explain_errors(client):
    assert client.get("/explain", params={"uid": "user01"}).status_code == 400
    r = client.get("/explain", params={"uid": "user01", "item": "nope"})
    assert r.status_code == 404 and "not in the catalog" in r.json()["error"]


def test_render_serves_a_jpeg_in_the_shoppers_style_then_from_the_cache(shop, client):
    r = client.get("/render/user01/green03")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.content[:2] == b"\xff\xd8"
    again = client.get("/render/user01/green03")
    assert again.content == r.content
    metrics = client.get("/metrics").text
    assert 'stylerec_render_cache_total{result="miss"} 1.0' in metrics
    assert 'stylerec_render_cache_total{result="hit"} 1.0' in metrics
    photo = client.get("/image/green03")
    assert photo.status_code == 200
    assert photo.content == (shop["root"] / "images" / "green03.jpg").read_bytes()


def test_render_is_what_the_library_renders_for_that_shopper(shop, client, tmp_path):
    served = client.get("/render/user01/green03").content
    model = StyleRecommender.load(shop["model_dir"], renderer=_renderer(tmp_path / "library"))
    (paths,), (errors,) = model.render([["green03"]], [model.recommend(["user01"], 1)[0].style])
    assert errors == [None] and Path(paths[0]).read_bytes() == served


@pytest.mark.parametrize("path", [
    "/render/user01/nope", "/render/user01/..%2F..%2Fmodel%2Frecommender.json",
    "/render/user01/%2Fetc%2Fpasswd", "/image/..%2Fmodel%2Frecommender.json", "/image/nope"])
def test_render_and_image_never_leave_the_catalog(client, path):
    r = client.get(path)
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"


def test_render_is_404_when_rendering_is_disabled(shop, tmp_path):
    with TestClient(create_app(shop["model_dir"], tmp_path / "f.db")) as c:
        r = c.get("/render/user01/green03")
        assert r.status_code == 404 and "disabled" in r.json()["error"]
        body = c.get("/recommend", params={"uid": "user01"}).json()
        assert body["variant"] == "plain" and body["items"][0]["render_url"] is None


# -- /feedback ----------------------------------------------------------------------------


def test_feedback_single_and_batch_are_on_disk_with_variants(client, tmp_path):
    one = {"uid": "user01", "item": "red01", "type": "impression", "position": 1,
           "event_id": "e1"}
    r = client.post("/feedback", json=one)
    assert r.status_code == 200 and r.json() == {"accepted": 1, "stored": 1}
    batch = {"events": [{"uid": "user02", "item": "red02", "type": "click",
                         "ts": "2026-01-01T10:00:00"}, one]}
    assert client.post("/feedback", json=batch).json() == {"accepted": 2, "stored": 1}
    frame = FeedbackLog(tmp_path / "feedback.db").to_frame()  # another connection reads it
    assert frame["item"].tolist() == ["red01", "red02"]
    variant = client.get("/recommend", params={"uid": "user01", "k": 1}).json()["variant"]
    assert frame["variant"].iloc[0] == variant
    assert frame["ts"].iloc[1] == pd.Timestamp("2026-01-01T10:00:00", tz="UTC").timestamp()
    assert 'stylerec_feedback_events_total{type="click"} 1.0' in client.get("/metrics").text


@pytest.mark.parametrize(("body", "status", "message"), [
    (b"{", 400, "not valid JSON"),
    (b"[]", 400, "no events"),
    (json.dumps({"uid": "u", "item": "i"}).encode(), 400, "type must be one of"),
    (json.dumps({"uid": "u", "item": "i", "type": "like"}).encode(), 400, "type must be one"),
    (json.dumps([{"uid": "u", "item": "i", "type": "click", "position": 0}]).encode(), 400,
     "event 0: position"),
    (json.dumps({"uid": "u", "item": "i", "type": "click", "ts": "yesterday"}).encode(), 400,
     "ts must be"),
    (json.dumps({"uid": "u", "item": "i", "type": "click", "colour": "red"}).encode(), 400,
     "unknown event field"),
    (json.dumps({"uid": "u", "item": "i", "type": "click", "variant": "gold"}).encode(), 400,
     "variant 'gold'"),
    (json.dumps({"uid": 5, "item": "i", "type": "click"}).encode(), 400, "uid must be"),
    (json.dumps({"events": "x"}).encode(), 400, "a batch is"),
    (json.dumps([{"uid": "u", "item": "i", "type": "click"}] * 6).encode(), 400,
     "the limit is 5"),
    (b"[" + b" " * 3000 + b"]", 413, "2000-byte limit"),
])
def test_feedback_rejects_bad_input_and_stores_nothing(client, tmp_path, body, status, message):
    r = client.post("/feedback", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status and message in r.json()["error"]
    assert FeedbackLog(tmp_path / "feedback.db").count() == 0


# -- online updates ------------------------------------------------------------------------


def test_a_new_shopper_who_clicks_three_items_gets_their_neighbours_within_a_second(shop,
                                                                                   client):
    before = client.get("/recommend", params={"uid": "newbie", "k": 5}).json()
    assert before["fallback"] is True
    clicked = ["green00", "green01", "green02"]
    for item in clicked:
        assert client.post("/feedback", json={"uid": "newbie", "item": item,
                                              "type": "click"}).status_code == 200
    start = time.perf_counter()
    after = client.get("/recommend", params={"uid": "newbie", "k": 5}).json()
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0
    assert after["folded_in"] is True and after["fallback"] is False
    assert not set(clicked) & set(after["recommendations"])
    assert _colours(shop, after["recommendations"]) == ["green"] * 5
    assert _colours(shop, before["recommendations"]).count("green") < 5
    assert after["style"]["id"] == "green-style"


def test_a_known_shoppers_clicks_move_their_slate_and_impressions_do_not(shop, client):
    before = client.get("/recommend", params={"uid": "user00", "k": 6}).json()  # a red shopper
    assert _colours(shop, before["recommendations"])[:3] == ["red"] * 3
    client.post("/feedback", json={"events": [
        {"uid": "user00", "item": f"blue0{j}", "type": "impression"} for j in range(5)]})
    same = client.get("/recommend", params={"uid": "user00", "k": 6}).json()
    assert same["recommendations"] == before["recommendations"]
    client.post("/feedback", json={"events": [
        {"uid": "user00", "item": f"blue0{j}", "type": "purchase"} for j in range(5)]})
    after = client.get("/recommend", params={"uid": "user00", "k": 6}).json()
    assert after["folded_in"] is True
    assert _colours(shop, after["recommendations"]).count("blue") > 0
    assert not {f"blue0{j}" for j in range(5)} & set(after["recommendations"])
    bought = set(shop["data"].user_history("user00")["item_id"])
    assert not bought & set(after["recommendations"])  # fit-time items stay excluded


# -- health, metrics, reload, api key ----------------------------------------------------


def test_healthz_and_metrics(client):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["items"] == 30 and health["users"] == 24
    client.get("/recommend", params={"uid": "user01"})
    text = client.get("/metrics").text
    assert 'stylerec_requests_total{endpoint="/recommend",status="200"} 1.0' in text
    assert 'stylerec_request_seconds_bucket{endpoint="/recommend",le="+Inf"} 1.0' in text
    assert f'stylerec_model_info{{path="{health["model_dir"]}",version="' in text


def _slate_cache(client) -> dict[str, float]:
    lines = [line for line in client.get("/metrics").text.splitlines()
             if line.startswith("stylerec_slate_cache_total{")]
    return {line.split('"')[1]: float(line.split()[-1]) for line in lines}


def test_slates_are_cached_exactly_and_a_click_recomputes_only_that_shopper(shop, client):
    # the start computed the 10-item slate of each of the 24 fit-time shoppers
    assert _slate_cache(client) == {"hit": 0.0, "miss": 24.0}
    body = client.get("/recommend", params={"uid": "user01"}).json()
    assert body["recommendations"] == shop["model"].recommend(["user01"], k=10)[0].item_ids
    assert _slate_cache(client) == {"hit": 1.0, "miss": 24.0}
    client.get("/recommend", params={"uid": "user01", "k": 4})  # another k: computed
    assert _slate_cache(client) == {"hit": 1.0, "miss": 25.0}
    assert client.post("/feedback", json={"uid": "user01", "item": "green00",
                                          "type": "click"}).status_code == 200
    after = client.get("/recommend", params={"uid": "user01"}).json()
    client.get("/recommend", params={"uid": "user02"})
    assert _slate_cache(client) == {"hit": 2.0, "miss": 26.0}
    assert after["folded_in"] and after["recommendations"] != body["recommendations"]
    # shoppers the model never saw, without events, share the one fallback slate
    a = client.get("/recommend", params={"uid": "new-a"}).json()
    b = client.get("/recommend", params={"uid": "new-b"}).json()
    assert a["fallback"] and a["recommendations"] == b["recommendations"]
    assert a["query"]["uid"] == "new-a" and b["query"]["uid"] == "new-b"
    assert _slate_cache(client) == {"hit": 3.0, "miss": 27.0}


def test_without_a_slate_cache_every_request_is_computed(shop, tmp_path):
    app = create_app(shop["model_dir"], tmp_path / "feedback.db", limits=Limits(slate_cache=0))
    with TestClient(app) as c:
        for _ in range(2):
            body = c.get("/recommend", params={"uid": "user01"}).json()
            assert body["recommendations"] == shop["model"].recommend(["user01"], 10)[0].item_ids
        assert _slate_cache(c) == {"hit": 0.0, "miss": 2.0}


def test_reload_swaps_the_model_without_a_failed_request(shop, client, tmp_path):
    other = StyleRecommender(
        "als", {"factors": 4, "iterations": 3, "random_state": 1}, encoder=ColourEncoder(grid=2),
        embedding_dim=None, blend=0.2, ranker_params={"n_cf_candidates": 10,
                                                      "n_taste_candidates": 10})
    other.fit(shop["data"], Catalog.from_directory(shop["root"] / "images"),
              shop["root"] / "styles").save(tmp_path / "other")
    old = client.get("/healthz").json()["model_version"]
    statuses, stop = [], threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            statuses.append(client.get("/recommend", params={"uid": "user05"}).status_code)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    r = client.post("/admin/reload", json={"model_dir": str(tmp_path / "other")})
    time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join()
    assert r.status_code == 200 and r.json()["previous"] == old
    assert r.json()["model_version"] != old
    assert client.get("/healthz").json()["model_version"] == r.json()["model_version"]
    assert statuses and set(statuses) == {200}
    bad = client.post("/admin/reload", json={"model_dir": str(tmp_path / "missing")})
    assert bad.status_code == 400 and "still serving" in bad.json()["error"]
    assert client.post("/admin/reload", json={"x": 1}).status_code == 400
    assert client.get("/healthz").json()["model_version"] == r.json()["model_version"]


def test_api_key_guards_everything_but_healthz(shop, tmp_path):
    app = create_app(shop["model_dir"], tmp_path / "f.db", api_key="s3cret")
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/recommend", params={"uid": "user01"})
        assert r.status_code == 401 and "X-API-Key" in r.json()["error"]
        assert c.get("/metrics", headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.get("/recommend", params={"uid": "user01"},
                     headers={"X-API-Key": "s3cret"}).status_code == 200


def test_unknown_path_is_json_404(client):
    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["error"]


# -- the real server ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_real_server_process_answers_on_loopback(shop, tmp_path):
    port = _free_port()
    env = os.environ | {"PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "stylerec", "serve", "--model-dir", str(shop["model_dir"]),
         "--port", str(port), "--feedback-log", str(tmp_path / "f.db"), "--no-render"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "server did not come up in 120 s"
            time.sleep(0.3)
        body = httpx.get(f"{base}/recommend", params={"uid": "user02", "k": 4}).json()
        assert len(body["recommendations"]) == 4 and body["style"]["id"] == "green-style"
        r = httpx.post(f"{base}/feedback", json={"uid": "user02", "item": "red01",
                                                 "type": "click"})
        assert r.status_code == 200
        assert FeedbackLog(tmp_path / "f.db").count() == 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_refuses_a_public_address_without_an_api_key(shop, capsys):
    from stylerec.cli import main

    code = main(["serve", "--model-dir", str(shop["model_dir"]), "--host", "0.0.0.0"])
    assert code == 2 and "--api-key" in capsys.readouterr().err


@pytest.mark.slow
def test_load_test_keeps_every_acknowledged_event_through_a_kill(shop, tmp_path):
    from evaluation.bench_service import LoadConfig, format_record, run_load_test

    record = run_load_test(LoadConfig(shop["model_dir"], tmp_path / "bench", clients=(2,),
                                      duration=4, feedback_clients=2, warmup=0.5))
    recommend, kill = record["phases"]
    assert recommend["errors"] == 0 and recommend["requests"] > 0
    assert kill["kill"]["downtime_s"] > 0 and kill["events_acked"] > 0
    assert kill["log"]["acked_events_missing"] == 0 and kill["log"]["integrity"] == "ok"
    assert record["online_update"]["after"]["folded_in"] is True
    assert "online update" in format_record(record)


def test_a_shopper_twice_in_one_batch_gets_the_same_slate_as_alone(shop, tmp_path):
    from stylerec.service import Service

    service = Service(shop["model_dir"], tmp_path / "f.db")
    service.log.append([Event(u, "green01", "click", time.time()) for u in ("user00", "new")])
    _, alone = service.slates(["user00", "new"], 5)
    _, twice = service.slates(["user00", "new", "user00", "new"], 5)
    service.batcher.close()
    assert [s.item_ids for s in twice] == [s.item_ids for s in alone] * 2
    assert [s.user_id for s in twice] == ["user00", "new", "user00", "new"]
