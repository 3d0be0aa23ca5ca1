"""The one Registry type: lazy built-ins, refusal to overwrite, entry points, clear errors."""

from __future__ import annotations

import sys
import types
from importlib.metadata import EntryPoint

import pytest

from ground import registry as registry_module
from ground.registry import Registry, UnknownNameError


def test_register_create_and_name_attribute():
    reg = Registry("widget", "test.widgets")

    @reg.register("box")
    class Box:
        def __init__(self, size=1):
            self.size = size

    assert reg.create("box", size=3).size == 3
    assert Box.name == "box"
    assert reg.names() == ["box"]
    assert "box" in reg and "tube" not in reg


def test_refuses_silent_overwrite_but_allows_same_factory():
    reg = Registry("widget", "test.widgets")

    class A:
        pass

    reg.register("a")(A)
    reg.register("a")(A)  # same factory again: fine
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(type("B", (), {}))


@pytest.mark.parametrize("bad", ["", "Upper", "1abc", "a b", None])
def test_rejects_malformed_names(bad):
    with pytest.raises(ValueError, match="bad widget name"):
        Registry("widget", "test.widgets").register(bad)


def test_unknown_name_lists_available():
    reg = Registry("widget", "test.widgets")
    reg.register("x")(type("X", (), {}))
    with pytest.raises(UnknownNameError, match=r"unknown widget 'y'; available: x") as err:
        reg.get("y")
    assert isinstance(err.value, LookupError)


def test_builtins_import_lazily(monkeypatch):
    module = types.ModuleType("fake_builtin_widgets")
    reg = Registry("widget", "test.widgets", builtins={"lazy": "fake_builtin_widgets"})
    imported = []

    def exec_module():
        imported.append(True)
        reg.register("lazy")(type("Lazy", (), {}))

    monkeypatch.setitem(sys.modules, "fake_builtin_widgets", module)
    monkeypatch.setattr(registry_module.importlib, "import_module",
                        lambda name: exec_module() or module)
    assert reg.names() == ["lazy"] and imported == []  # listing does not import
    assert reg.get("lazy").__name__ == "Lazy" and imported == [True]


def test_entry_point_factories_are_found_by_name(monkeypatch):
    plugin = types.ModuleType("fake_widget_plugin")

    class Plugged:
        pass

    plugin.Plugged = Plugged
    monkeypatch.setitem(sys.modules, "fake_widget_plugin", plugin)
    reg = Registry("widget", "test.widgets")
    ep = EntryPoint(name="plugged", value="fake_widget_plugin:Plugged", group="test.widgets")
    monkeypatch.setattr(registry_module, "entry_points",
                        lambda group: [ep] if group == "test.widgets" else [])
    assert "plugged" in reg.names()
    assert isinstance(reg.create("plugged"), Plugged)
    assert Plugged.name == "plugged"
