"""The entry-point registry, tested with injected fake distributions (nothing installed)."""

from __future__ import annotations

import importlib.metadata as md
import sys
import types

import pytest

from slimkit import Kind, PluginError, Registry, Stage, UnknownPluginError


class FakeDist:
    def __init__(self, name: str, version: str = "1.0"):
        self.name, self.version = name, version


def fake_ep(name: str, value: str, dist: str, group: str = "slimkit.pruners"):
    ep = md.EntryPoint(name=name, value=value, group=group)
    object.__setattr__(ep, "dist", FakeDist(dist))  # EntryPoint is immutable; tests pin a distribution
    return ep


def source(*eps):
    return lambda group: [ep for ep in eps if ep.group == group]


class GoodPruner(Stage):
    kind = Kind.PRUNER
    name = "good"

    def apply(self, state):
        return {}


@pytest.fixture
def fake_module(monkeypatch):
    module = types.ModuleType("fake_slimkit_plugins")
    module.GoodPruner = GoodPruner
    module.NotAStage = object
    module.Misnamed = type("Misnamed", (GoodPruner,), {"name": "other"})
    monkeypatch.setitem(sys.modules, "fake_slimkit_plugins", module)
    return module


def test_discovers_without_importing_and_records_distribution():
    registry = Registry(source(fake_ep("good", "not_imported_module:GoodPruner", "slimkit-good")))
    (info,) = registry.infos(Kind.PRUNER)
    assert (info.name, info.distribution, info.version) == ("good", "slimkit-good", "1.0")
    assert "not_imported_module" not in sys.modules
    assert registry.infos(Kind.QUANTIZER) == []


def test_loads_the_class(fake_module):
    registry = Registry(source(fake_ep("good", "fake_slimkit_plugins:GoodPruner", "slimkit-good")))
    assert registry.get(Kind.PRUNER, "good") is GoodPruner


def test_unknown_name_suggests_close_installed_names_and_never_a_made_up_package():
    registry = Registry(source(fake_ep("wanda", "x:Y", "slimkit-wanda"), fake_ep("magnitude", "x:Z", "slimkit-magnitude")))
    with pytest.raises(UnknownPluginError) as err:
        registry.get(Kind.PRUNER, "wanda2")
    message = str(err.value)
    assert "pruner='wanda2'" in message and "Installed: magnitude, wanda" in message
    assert err.value.suggestions == ["wanda"] and "Did you mean 'wanda'?" in message
    assert "pip install slimkit-wanda2" not in message and "slimkit-wanda2" not in message
    with pytest.raises(UnknownPluginError) as err:
        registry.get(Kind.PRUNER, "zzz")
    assert err.value.suggestions == [] and "Did you mean" not in str(err.value)


def test_duplicate_names_from_two_distributions_raise_naming_both():
    registry = Registry(source(fake_ep("good", "a:X", "dist-one"), fake_ep("good", "b:Y", "dist-two")))
    with pytest.raises(PluginError, match="dist-one.*dist-two"):
        registry.names(Kind.PRUNER)


def test_same_distribution_seen_twice_is_not_a_duplicate(fake_module):
    ep = fake_ep("good", "fake_slimkit_plugins:GoodPruner", "slimkit-good")
    registry = Registry(source(ep, ep))
    assert registry.names(Kind.PRUNER) == ["good"]


def test_broken_import_names_plugin_and_distribution():
    registry = Registry(source(fake_ep("broken", "module_that_does_not_exist_42:Cls", "slimkit-broken")))
    with pytest.raises(PluginError) as err:
        registry.get(Kind.PRUNER, "broken")
    assert "'broken'" in str(err.value) and "slimkit-broken" in str(err.value)
    assert "ModuleNotFoundError" in str(err.value)


def test_entry_point_that_is_not_a_stage_is_rejected(fake_module):
    registry = Registry(source(fake_ep("odd", "fake_slimkit_plugins:NotAStage", "slimkit-odd")))
    with pytest.raises(PluginError, match="not a slimkit Plugin"):
        registry.get(Kind.PRUNER, "odd")


def test_class_name_must_match_entry_point(fake_module):
    registry = Registry(source(fake_ep("good", "fake_slimkit_plugins:Misnamed", "slimkit-good")))
    with pytest.raises(PluginError, match="must match"):
        registry.get(Kind.PRUNER, "good")


def test_first_party_plugins_register_through_entry_points():
    from slimkit import default_registry

    registry = default_registry()
    assert registry.info(Kind.QUANTIZER, "quanto").distribution == "slimkit-quanto"
    assert registry.info(Kind.PRUNER, "magnitude").distribution == "slimkit-magnitude"
