"""The CLI over a table of bad invocations, each in its own process, as a user runs it.

Every failure must be one line on stderr that names the fix, with a non-zero exit
code and no traceback (``-v`` shows it). The invocations run two at a time in a
module fixture; each row is then checked by its own test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
LOG = "log.csv"
FIT = ["fit", "--interactions", LOG, "--model", "popularity"]
RENDER = ["render", "--item", "a.png", "--style", "s.png", "--out", "r", "--device", "cpu"]

# (id, arguments, text the one line must contain)
BAD = [
    ("out-is-a-user-folder", FIT + ["--out", "mine"], "refusing to replace mine"),
    ("out-is-a-file", FIT + ["--out", "notes.txt"], "it is a file, not a saved model"),
    ("out-is-cwd", FIT + ["--out", "."], "refusing to"),
    ("unknown-param", ["fit", "--interactions", LOG, "--param", "factor=8", "--out", "m"],
     "unknown parameter(s) ['factor'] for model 'als'; valid: ['factors'"),
    ("bad-param-value", ["fit", "--interactions", LOG, "--param", "factors=abc", "--out", "m"],
     "als parameter factors must be an integer, got 'abc'"),
    ("iterations-0", ["fit", "--interactions", LOG, "--param", "iterations=0", "--out", "m"],
     "iterations must be >= 1"),
    ("param-not-key-value", ["fit", "--interactions", LOG, "--param", "factors", "--out", "m"],
     "--param needs KEY=VALUE"),
    ("unknown-model", ["fit", "--interactions", LOG, "--model", "nope", "--out", "m"],
     "invalid choice: 'nope'"),
    ("missing-log", ["fit", "--interactions", "nope.csv", "--out", "m"],
     "interaction log not found: nope.csv"),
    ("empty-log", ["fit", "--interactions", "empty.csv", "--out", "m"], "empty.csv is empty"),
    ("ambiguous-dates", ["fit", "--interactions", "dates.csv", "--out", "m"],
     "--date-format '%d/%m/%Y' or '%m/%d/%Y'"),
    ("headerless-without-columns", ["fit", "--interactions", "plays.tsv", "--no-header",
                                    "--out", "m"], "--columns user,item"),
    ("unknown-columns", ["fit", "--interactions", "odd.csv", "--out", "m"],
     "can't tell the user column"),
    ("styles-folder-missing", FIT + ["--images", "images", "--styles", "nope", "--out", "m"],
     "image folder not found: nope"),
    ("truncated-npz", ["recommend", "--model-dir", "truncated", "--user", "u0"],
     "damaged or was not written by stylerec"),
    ("foreign-npz", ["recommend", "--model-dir", "foreign", "--user", "u0"],
     "damaged or was not written by stylerec"),
    ("damaged-json", ["recommend", "--model-dir", "badjson", "--user", "u0"],
     "model.json is damaged"),
    ("unknown-user", ["recommend", "--model-dir", "model", "--user", "ghost"],
     "unknown user id(s) ['ghost']"),
    ("not-a-model", ["recommend", "--model-dir", "mine", "--user", "u0"], "no saved model"),
    ("unknown-styler", RENDER + ["--styler", "nope"], "unknown styler 'nope'; available:"),
    ("fast-without-weights", RENDER + ["--styler", "fast"], "needs --param weights=..."),
    ("wct-without-weights", RENDER + ["--styler", "wct"], "needs --param weights_dir=..."),
    ("weights-not-found", RENDER + ["--styler", "fast", "--param", "weights=candy.pth"],
     "looked for"),
    ("unknown-styler-param", RENDER + ["--styler", "color", "--param", "nope=1"],
     "unknown --param nope for styler 'color'; it takes: method"),
    ("bad-device", RENDER[:-1] + ["banana", "--styler", "color"], "unknown device 'banana'"),
    ("render-item-missing", ["render", "--item", "nope.png", "--styler", "color"],
     "image 'nope.png' not found"),
    ("config-not-json", ["evaluate", "--config", "notjson.json"], "not valid JSON"),
    ("config-models-not-a-list", ["evaluate", "--config", "shape.json"],
     "config 'models' must be a list"),
    ("config-runs-code", ["evaluate", "--config", "code.json"],
     "pass --allow-code"),
]


def _setup(root: Path) -> None:
    rows = ["user_id,item_id"] + [f"u{u},i{(u * 7 + j) % 9}" for u in range(12) for j in range(3)]
    (root / LOG).write_text("\n".join(rows) + "\n")
    (root / "mine").mkdir()
    (root / "mine" / "keep.txt").write_text("mine")
    (root / "notes.txt").write_text("notes")
    (root / "empty.csv").write_text("")
    (root / "dates.csv").write_text("user_id,item_id,date\na,x,01/02/2018\nb,y,03/04/2018\n")
    (root / "plays.tsv").write_text("a\tx\t3\n")
    (root / "odd.csv").write_text("who,what\na,x\n")
    (root / "images").mkdir()
    Image.new("RGB", (32, 32), "red").save(root / "images" / "i0.png")
    Image.new("RGB", (32, 32), "red").save(root / "a.png")
    Image.new("RGB", (32, 32), "blue").save(root / "s.png")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "stylerec", *FIT, "--out", "model"], cwd=root,
                   env=env, check=True, capture_output=True)
    for name in ("truncated", "foreign", "badjson"):
        subprocess.run(["cp", "-r", "model", name], cwd=root, check=True)
    npz = root / "truncated" / "arrays.npz"
    npz.write_bytes(npz.read_bytes()[:100])
    np.savez(root / "foreign" / "arrays.npz", weights=np.ones(3))
    (root / "badjson" / "model.json").write_text('{"format": 2, "model": ')
    (root / "notjson.json").write_text("{nope")
    config = {"data": {"path": LOG}, "split": {"method": "ratio"}, "models": {"a": "als"}}
    (root / "shape.json").write_text(json.dumps(config))
    config["models"] = [{"name": "x", "model": "os:system", "params": {"command": "touch pwned"}}]
    (root / "code.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> tuple[Path, dict[str, subprocess.CompletedProcess]]:
    root = tmp_path_factory.mktemp("cli-errors")
    _setup(root)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1"}

    def run(args: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "stylerec", *args], cwd=root, env=env,
                              capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(2) as pool:
        done = dict(zip([b[0] for b in BAD], pool.map(run, [b[1] for b in BAD]), strict=True))
    return root, done


@pytest.mark.parametrize("name, args, expected", BAD, ids=[b[0] for b in BAD])
def test_bad_invocation_is_one_line_naming_the_fix(results, name, args, expected):
    root, done = results
    proc = done[name]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1, proc.stderr
    assert expected in lines[0]
    assert lines[0].startswith("stylerec")
    # nothing on disk was lost or run
    assert (root / "mine" / "keep.txt").read_text() == "mine"
    assert [p.name for p in (root / "mine").iterdir()] == ["keep.txt"]
    assert (root / "notes.txt").read_text() == "notes"
    assert not (root / "pwned").exists() and not (root / "m").exists()
    assert not [p.name for p in root.iterdir() if p.name.startswith(".")]


def test_verbose_shows_the_traceback(results):
    root, _ = results
    proc = subprocess.run([sys.executable, "-m", "stylerec", "-v", "recommend", "--model-dir",
                           "truncated", "--user", "u0"], cwd=root, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert proc.returncode == 2 and "Traceback" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("stylerec recommend: error: ")
