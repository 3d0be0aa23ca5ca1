"""The layers point one way: ground → stylers → recsys → evaluation → stylerec (app)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["ground", "stylers", "recsys", "evaluation", "stylerec"]


def imported_packages(source: str) -> set[str]:
    """Top-level package names imported by ``source`` (absolute imports only)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def upward_imports(package: str, source: str) -> set[str]:
    """Packages of a higher layer than ``package`` that ``source`` imports."""
    level = LAYERS.index(package)
    return {name for name in imported_packages(source) if name in LAYERS[level + 1:]}


def test_no_module_imports_a_higher_layer():
    violations = []
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            for above in upward_imports(package, path.read_text()):
                violations.append(f"{path.relative_to(ROOT)} imports {above}")
    assert violations == []


@pytest.mark.parametrize(("package", "source", "expected"), [
    ("stylers", "from recsys.files import atomic_write\n", {"recsys"}),
    ("recsys", "def f():\n    import stylerec.cli\n", {"stylerec"}),
    ("ground", "import evaluation.metrics as m\n", {"evaluation"}),
    ("recsys", "from stylers.effnet import X\nfrom ground.files import y\n", set()),
    ("evaluation", "from .metrics import ndcg\n", set()),
])
def test_the_checker_catches_a_planted_upward_import(package, source, expected):
    assert upward_imports(package, source) == expected


def test_every_package_is_in_a_layer():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages - {"tests"} == set(LAYERS)
