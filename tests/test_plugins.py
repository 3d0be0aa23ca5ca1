"""A third-party package (tests/plugin_pkg) adds a CF model, an encoder and a styler
through entry points; the CLI uses all three by name.

The package is "installed" for the subprocesses the way pip would make it visible to
``importlib.metadata``: a ``.dist-info`` folder with its ``entry_points.txt`` on the path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "tests" / "plugin_pkg"


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> dict[str, str]:
    """Environment whose Python sees the plugin package as installed."""
    project = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    site = tmp_path_factory.mktemp("site")
    dist = site / f"stylerec_test_plugin-{project['version']}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\n"
                                   f"Version: {project['version']}\n")
    (dist / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in points.items())
        for group, points in project["entry-points"].items()))
    path = os.pathsep.join([str(ROOT), str(PLUGIN), str(site)])
    return {**os.environ, "PYTHONPATH": path, "OPENBLAS_NUM_THREADS": "1"}


def stylerec(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "stylerec", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_plugin_model_encoder_and_styler_by_name_from_the_cli(plugin_env, demo_dir, tmp_path):
    log = pd.read_csv(demo_dir / "transactions.csv", dtype=str)
    small = log[log["customer_id"].isin(log["customer_id"].drop_duplicates().iloc[:5])]
    small.to_csv(tmp_path / "t.csv", index=False)
    for item in small["article_id"].unique():
        (tmp_path / "images").mkdir(exist_ok=True)
        shutil.copy(demo_dir / "images" / item[:3] / f"{item}.jpg",
                    tmp_path / "images" / f"{item}.jpg")

    assert "plugin-item-count" in stylerec(plugin_env, "fit", "--help")
    out = stylerec(plugin_env, "fit", "--interactions", str(tmp_path / "t.csv"),
                   "--model", "plugin-item-count", "--param", "power=0.5",
                   "--images", str(tmp_path / "images"), "--encoder", "plugin-colour",
                   "--cache-dir", str(tmp_path / "emb"), "--out", str(tmp_path / "model"))
    assert "plugin-colour()@none" in out
    saved = json.loads((tmp_path / "model" / "cf" / "model.json").read_text())
    assert saved["model"] == "plugin-item-count" and saved["params"] == {"power": 0.5}
    spec = json.loads((tmp_path / "model" / "recommender.json").read_text())["spec"]
    assert spec["cf"]["name"] == "plugin-item-count" and spec["encoder"]["name"] == "plugin-colour"

    user = small["customer_id"].iloc[0]
    slate = json.loads(stylerec(plugin_env, "recommend", "--model-dir", str(tmp_path / "model"),
                                "--user", user, "-k", "3", "--json"))[0]
    assert len(slate["entries"]) == 3

    item = tmp_path / "images" / f"{small['article_id'].iloc[0]}.jpg"
    stylerec(plugin_env, "render", "--item", str(item), "--styler", "plugin-invert",
             "--cache-dir", str(tmp_path / "renders"), "--out", str(tmp_path / "gallery"),
             "--no-progress")
    [render] = [p for p in (tmp_path / "renders").rglob("*.png")]
    with Image.open(item) as original, Image.open(render) as rendered:
        expected = 255.0 - np.asarray(original.convert("RGB").resize(rendered.size), float)
        assert np.abs(np.asarray(rendered.convert("RGB"), float) - expected).mean() < 8.0
