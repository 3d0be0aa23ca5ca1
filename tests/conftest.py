"""Shared fixtures: the read-only ``../shared`` data and weights, skipped cleanly when absent."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

SHARED = Path(os.environ.get("STYLEREC_SHARED", Path(__file__).resolve().parents[2] / "shared"))
REPO = Path(__file__).resolve().parents[1]


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"needs {path} (the read-only ../shared folder beside the checkout)")
    return path


@pytest.fixture(scope="session")
def shared() -> Path:
    """Root of ``../shared``; skips the test when it is not there."""
    return _require(SHARED)


@pytest.fixture(scope="session")
def hm_dir(shared: Path) -> Path:
    return _require(shared / "data" / "hm")


@pytest.fixture(scope="session")
def ml100k_dir(shared: Path) -> Path:
    return _require(shared / "data" / "ml-100k")


@pytest.fixture(scope="session")
def styles_dir(shared: Path) -> Path:
    return _require(shared / "data" / "styles")


@pytest.fixture(scope="session")
def weights_dir(shared: Path) -> Path:
    return _require(shared / "weights")


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    """The small demo data set committed to the repo under ``data/``."""
    return REPO / "data"


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> str:
    """Name of a tiny OpenCLIP architecture registered with open_clip (random weights only)."""
    import open_clip
    from doubles import TINY_CLIP

    path = tmp_path_factory.mktemp("clipcfg") / "stylerec-tiny-test.json"
    path.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(path)
    return "stylerec-tiny-test"
