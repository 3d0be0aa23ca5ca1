"""``stylerec bench``: measurement bookkeeping, scaling replication and the output record.

Nothing here asserts a timing: the runs use tiny sizes (``--quick``) and check
the structure of what is written and that the numbers derive from the samples.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from evaluation import bench, bench_stages
from evaluation.bench_data import BenchData, original_id, replica_id, replicate
from evaluation.bench_report import format_table, scaling_rows
from evaluation.bench_timing import (
    Measurement,
    Samples,
    Target,
    paired_ratio,
    side_by_side,
    side_by_side_latencies,
    summarize,
)
from recsys.interactions import Interactions
from stylerec.cli import main

# -- statistics and pairing ---------------------------------------------------


def test_summarize_reports_median_percentiles_and_relative_iqr():
    stats = summarize([4.0, 1.0, 3.0, 2.0, 5.0])
    assert stats["n"] == 5 and stats["median"] == stats["p50"] == 3.0
    assert (stats["min"], stats["max"], stats["q1"], stats["q3"]) == (1.0, 5.0, 2.0, 4.0)
    assert stats["spread"] == pytest.approx((4.0 - 2.0) / 3.0)
    assert stats["p99"] == pytest.approx(np.percentile([1, 2, 3, 4, 5], 99))
    with pytest.raises(ValueError):
        summarize([])


def test_paired_ratio_is_the_median_of_per_pair_ratios():
    ours, bare = [2.0, 9.0, 3.0], [1.0, 3.0, 2.0]  # pair ratios 2, 3, 1.5
    ratio = paired_ratio(ours, bare)
    assert ratio["median"] == 2.0
    assert ratio["of_medians"] == pytest.approx(3.0 / 2.0)
    with pytest.raises(ValueError):
        paired_ratio([1.0], [1.0, 2.0])


def test_side_by_side_warms_up_then_alternates_abba():
    calls = []
    ours, bare = side_by_side(lambda: calls.append("o"), lambda: calls.append("b"),
                              repeats=4, warmup=1)
    assert "".join(calls) == "ob" + "ob" + "bo" + "ob" + "bo"
    assert len(ours) == len(bare) == 4 and all(t >= 0 for t in ours.wall + bare.cpu)


def test_side_by_side_latencies_pairs_each_input():
    seen = []
    ours, bare = side_by_side_latencies(lambda x: seen.append(("o", x)),
                                        lambda x: seen.append(("b", x)), [1, 2, 3], warmup=1)
    assert seen[:2] == [("o", 1), ("b", 1)]  # warm-up
    assert seen[2:] == [("o", 1), ("b", 1), ("b", 2), ("o", 2), ("o", 3), ("b", 3)]
    assert len(ours) == len(bare) == 3


def test_measurement_record_derives_ratio_throughput_and_target_from_samples():
    ours = Samples(wall=[0.2, 0.3, 0.25], cpu=[0.2, 0.2, 0.2])
    bare = Samples(wall=[0.2, 0.2, 0.2], cpu=[0.1, 0.1, 0.1])
    record = Measurement("cf", "fit", 1, "throughput", "iterations", 10, ours, bare, "bare",
                         target=Target("ratio", 1.10)).to_dict()
    assert record["ratio"]["median"] == pytest.approx(1.25)  # pair ratios 1.0, 1.5, 1.25
    assert record["ratio_cpu"]["median"] == pytest.approx(2.0)
    assert record["ours"]["per_second"] == pytest.approx(10 / 0.25)
    assert record["ours"]["samples"]["wall"] == ours.wall
    assert record["target"] == {"metric": "ratio", "limit": 1.10,
                                "value": record["ratio"]["median"], "met": False}
    latency = Measurement("serve", "one user", 1, "latency", "users", 1,
                          Samples(wall=[0.001] * 97 + [0.030] * 3, cpu=[0.001] * 100),
                          target=Target("p99_ms", 20)).to_dict()
    assert latency["ratio"] is None and latency["bare"] is None
    assert latency["target"]["value"] == pytest.approx(
        np.percentile([0.001] * 97 + [0.030] * 3, 99) * 1e3)
    assert latency["target"]["met"] is False


def test_peak_memory_sees_an_allocation_inside_the_block():
    # a fresh process: in this one, threads left by earlier tests (Ray, torch) can free
    # memory during the block and hide the allocation from a high-water mark
    code = (
        "import json, numpy as np\n"
        "from evaluation.bench_timing import PeakMemory\n"
        "with PeakMemory() as memory:\n"
        "    block = np.ones(40 << 17)  # 40 MiB, touched\n"
        "print(json.dumps(memory.as_dict()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    memory = json.loads(out.splitlines()[-1])
    if memory["method"] == "VmHWM":
        assert memory["added_rss_mib"] > 30
    assert set(memory) == {"peak_rss_mib", "added_rss_mib", "rss_at_start_mib", "method"}


# -- scaling replication ------------------------------------------------------


def test_replicate_gives_each_replica_new_disjoint_ids():
    log = pd.DataFrame({"user_id": ["a", "a", "b"], "item_id": ["x", "y", "x"],
                        "t_dat": ["2020-01-01", "2020-01-02", "2020-01-03"]})
    big = replicate(log, 3, "user_id", "item_id")
    assert len(big) == 9
    assert big["t_dat"].tolist() == log["t_dat"].tolist() * 3
    assert sorted(big["user_id"].unique()) == ["a", "a#1", "a#2", "b", "b#1", "b#2"]
    assert big["item_id"].iloc[3:6].tolist() == ["x#1", "y#1", "x#1"]
    assert [original_id(replica_id("0123", r)) for r in range(3)] == ["0123"] * 3
    data = Interactions.from_frame(big)
    assert (data.n_users, data.n_items, data.matrix.nnz) == (6, 6, 9)
    # block diagonal: replica r users only touch replica r items
    coo = data.matrix.tocoo()
    replica = np.vectorize(lambda s: s.partition("#")[2] or "0")
    assert (replica(data.user_ids[coo.row]) == replica(data.item_ids[coo.col])).all()
    with pytest.raises(ValueError, match="already contain"):
        replicate(big, 2, "user_id", "item_id")


def test_bench_data_scales_the_real_log_and_shares_images(demo_dir, tmp_path):
    data = BenchData(demo_dir / "transactions.csv", demo_dir / "images", demo_dir / "styles",
                     tmp_path, max_users=20, seed=0)
    one, four = data.interactions(1), data.interactions(4)
    assert one.n_users == 20
    assert (four.n_users, four.n_items, len(four)) == (80, 4 * one.n_items, 4 * len(one))
    assert four.matrix.nnz == 4 * one.matrix.nnz
    assert data.csv(4).parent == tmp_path and data.csv(4).is_file()
    item = one.item_ids[0]
    catalog = data.catalog(4)
    assert catalog.path(f"{item}#3") == catalog.path(item)
    assert len(data.image_paths(3)) == 3 and data.style_paths(2)


# -- the command --------------------------------------------------------------


QUICK = ["bench", "--quick", "--threads", "1", "--repeats", "2", "--latency-calls", "6"]


def _recomputed_ratio(m):
    o, b = np.array(m["ours"]["samples"]["wall"]), np.array(m["bare"]["samples"]["wall"])
    return float(np.median(o / b))


def test_quick_run_writes_table_json_and_plot(demo_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    code = main([*QUICK, "--stages", "load,cf", "--scales", "1,2", "--data", str(demo_dir),
                 "--max-users", "40", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "ours/bare" in text and "scaling" in text
    assert (out / "bench.txt").read_text() in text
    assert (out / "bench.png").stat().st_size > 0
    record = json.loads((out / "bench.json").read_text())
    assert {"cpu_model", "logical_cores", "ram_gib", "load_average"} <= set(record["machine"])
    assert record["versions"]["implicit"] and record["parameters"]["scales"] == [1, 2]
    assert record["load_average"]["before"] is None or len(record["load_average"]["before"]) == 3
    assert [(s["stage"], s["scale"], s["status"]) for s in record["stages"]] == [
        ("load", 1, "ok"), ("cf", 1, "ok"), ("load", 2, "ok"), ("cf", 2, "ok")]
    assert all(s["memory"]["peak_rss_mib"] > 0 for s in record["stages"])
    names = {(m["stage"], m["name"], m["scale"]) for m in record["measurements"]}
    assert ("cf", "fit", 1) in names and ("cf", "recommend 1 user", 2) in names
    for m in record["measurements"]:
        assert m["ratio"]["median"] == pytest.approx(_recomputed_ratio(m))
        assert m["ours"]["wall"]["n"] == len(m["ours"]["samples"]["wall"])
        assert m["bare_label"]
    fit = next(m for m in record["measurements"] if m["name"] == "fit" and m["scale"] == 1)
    assert fit["per_call"] == 2 and fit["unit"] == "iterations"  # quick: 2 iterations
    assert fit["target"]["limit"] == 1.10
    assert fit["params"]["users"] == 40
    scaled = next(m for m in record["measurements"] if m["name"] == "fit" and m["scale"] == 2)
    assert scaled["params"]["users"] == 80 and scaled["target"] is None
    assert {(r["stage"], r["name"]) for r in record["scaling"]} >= {("cf", "fit"), ("load", "load")}
    row = next(r for r in record["scaling"] if r["name"] == "fit")
    assert row["growth"] == pytest.approx(row["seconds"]["2"] / row["seconds"]["1"])


def test_stage_errors_are_recorded_and_other_stages_still_run(demo_dir, tmp_path, monkeypatch,
                                                             capsys):
    def missing(context, scale):
        raise ModuleNotFoundError("No module named 'recsys.nothing'")

    def broken(context, scale):
        raise RuntimeError("boom")

    monkeypatch.setitem(bench_stages.STAGES, "missing",
                        bench_stages.Stage("missing", missing, True, "not installed"))
    monkeypatch.setitem(bench_stages.STAGES, "broken",
                        bench_stages.Stage("broken", broken, False, "raises"))
    out = tmp_path / "bench"
    code = main([*QUICK, "--stages", "missing,broken,load", "--scales", "1", "--data",
                 str(demo_dir), "--max-users", "10", "--out", str(out), "--no-plot"])
    assert code == 1
    assert "boom" in capsys.readouterr().err
    stages = json.loads((out / "bench.json").read_text())["stages"]
    assert [(s["stage"], s["status"]) for s in stages] == [
        ("missing", "skipped"), ("broken", "failed"), ("load", "ok")]
    assert "recsys.nothing" in stages[0]["reason"]
    assert not (out / "bench.png").exists()


def test_unknown_stage_and_bad_scales_are_usage_errors(tmp_path, capsys):
    assert main(["bench", "--stages", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown stage(s) ['nope']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--scales", "1,zero"])


def test_quick_presets_yield_to_explicit_options(tmp_path):
    parser = bench.argparse.ArgumentParser()
    bench.add_bench_arguments(parser)
    config = bench.config_from_args(parser.parse_args(
        ["--quick", "--repeats", "7", "--out", str(tmp_path), "--data", "data"]))
    assert config.repeats == 7 and config.scales == (1, 2)
    assert config.model_params["iterations"] == bench.PRESETS["iterations"][1]
    full = bench.config_from_args(parser.parse_args(["--out", str(tmp_path)]))
    assert full.scales == (1, 4, 16) and full.model_params["factors"] == 64


def test_latency_calls_and_repeats_shrink_at_larger_scales(tmp_path):
    config = bench_stages.BenchConfig(transactions=tmp_path / "t.csv", images=None, styles=None,
                                      weights=tmp_path, out=tmp_path, stages=("cf",),
                                      latency_calls=300, repeats=5)
    ctx = bench_stages.BenchContext(config, data=None)
    assert [ctx.latency_calls(f) for f in (1, 4, 16)] == [300, 75, 50]
    assert [ctx.repeats(f) for f in (1, 4, 16)] == [5, 3, 3]
    small = bench_stages.BenchContext(
        bench_stages.BenchConfig(**{**vars(config), "latency_calls": 20}), data=None)
    assert small.latency_calls(16) == 20  # never more calls than asked for at scale 1


def test_table_flags_missed_targets():
    ours = Samples(wall=[2.0, 2.0], cpu=[1.0, 1.0])
    bare = Samples(wall=[1.0, 1.0], cpu=[1.0, 1.0])
    record = {
        "measurements": [Measurement("cf", "fit", 1, "throughput", "iterations", 1, ours, bare,
                                     "bare", target=Target("ratio", 1.1)).to_dict()],
        "stages": [{"stage": "cf", "scale": 1, "status": "ok", "memory": {"added_rss_mib": 5}}],
    }
    assert "MISSED (ratio ≤ 1.1)" in format_table(record)
    assert scaling_rows(record) == []


def test_search_rank_serve_stages_record_their_measurements(demo_dir, tmp_path):
    out = tmp_path / "bench"
    code = main([*QUICK, "--stages", "search,rank,serve", "--scales", "1", "--data",
                 str(demo_dir), "--max-users", "30", "--stylers", "color", "--out", str(out),
                 "--no-plot"])
    assert code == 0
    record = json.loads((out / "bench.json").read_text())
    assert [s["status"] for s in record["stages"]] == ["ok", "ok", "ok"]
    by_name = {(m["stage"], m["name"]): m for m in record["measurements"]}
    search = by_name["search", "search"]
    assert search["bare_label"] == "faiss.IndexFlatIP.search"
    assert search["params"]["embeddings"] == "synthetic unit vectors"
    assert by_name["search", "search 1 query"]["ours"]["wall"]["n"] == 6
    assert {"taste fit", "cf score", "taste transform", "rank"} <= {
        name for stage, name in by_name if stage == "rank"}
    serve = by_name["serve", "recommend 1 user [Flat]"]
    assert serve["kind"] == "latency" and serve["target"]["metric"] == "p99_ms"
    assert serve["target"]["value"] == pytest.approx(serve["ours"]["wall"]["p99"] * 1e3)
    assert serve["params"]["items"] == record["measurements"][0]["params"]["items"]
    cold = by_name["serve", "recommend 1 user + render, cold [Flat]"]
    warm = by_name["serve", "recommend 1 user + render, warm [Flat]"]
    assert cold["ours"]["wall"]["n"] == 1 and warm["ours"]["wall"]["n"] == 6
    assert warm["params"]["renders"]["rendered"] == 10  # k renders for the one user, once
    assert warm["params"]["renders"]["hits"] == (6 + 6) * 10  # 6 warm-up + 6 timed calls


def test_style_stage_matches_against_a_synthetic_library(demo_dir, tmp_path):
    from PIL import Image

    from evaluation.bench_stages import synthetic_references

    out = tmp_path / "bench"
    assert main([*QUICK, "--stages", "style", "--scales", "1", "--data", str(demo_dir),
                 "--max-users", "30", "--style-references", "12", "--out", str(out),
                 "--no-plot"]) == 0
    record = json.loads((out / "bench.json").read_text())
    assert record["stages"][0]["status"] == "ok"
    by_name = {m["name"]: m for m in record["measurements"] if m["stage"] == "style"}
    assert set(by_name) == {"fit, cold (reads the references)", "fit", "match", "match 1 user"}
    params = by_name["match 1 user"]["params"]
    assert (params["references"], params["population"]) == (12, 30)
    assert params["matcher"]["hubness"] == "balanced"
    assert by_name["match 1 user"]["target"]["metric"] == "p99_ms"
    # the references are seeded colour bands, written once and the same on a second call
    paths = synthetic_references(out / "data" / "style-references", 12, 0)
    again = synthetic_references(tmp_path / "again", 12, 0)
    for a, b in zip(paths, again, strict=True):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    assert 2 <= len(np.unique(np.asarray(Image.open(paths[0])).reshape(-1, 3), axis=0)) <= 6


def test_encode_and_render_stages_split_decode_forward_and_cache_hits(demo_dir, tmp_path):
    out = tmp_path / "bench"
    code = main([*QUICK, "--stages", "encode,render", "--stylers", "color", "--data",
                 str(demo_dir), "--out", str(out), "--no-plot"])
    assert code == 0
    record = json.loads((out / "bench.json").read_text())
    names = [(m["stage"], m["name"]) for m in record["measurements"]]
    assert names == [("encode", "decode+preprocess"), ("encode", "forward"),
                     ("encode", "encode"), ("encode", "encode vs own forward"),
                     ("render", "color stylize"),
                     ("render", "color render (cold cache)"), ("render", "color cache hit")]
    encode = record["measurements"][2]
    assert encode["target"]["limit"] == 1.15 and encode["per_call"] == 4
    assert encode["ours"]["samples"]["wall"] and encode["bare"]["samples"]["wall"]
    own = record["measurements"][3]
    assert own["target"]["limit"] == pytest.approx(1 / 0.85, abs=1e-3)
    assert own["bare_label"].startswith("our forward")
    hit = record["measurements"][-1]
    assert hit["kind"] == "latency" and hit["target"]["limit"] == 5.0
    assert (out / "render-cache" / "color" / "warm").is_dir()
    assert not list((out / "render-cache" / "color").glob("cold-*"))  # cold caches removed
