"""The registry: names to passes and sources, remembering who registered each; conflicts named."""

from __future__ import annotations

import json

import plugins_for_tests
import pytest
from fake_distributions import FakeDistribution, install_fake_distributions, write_module

from optkit.config.pipeline import parse_pipeline
from optkit.errors import PipelineError, PluginError
from optkit.host.facade import Host
from optkit.host.manager import PluginRecord
from optkit.host.registry import Registry

ALPHA = PluginRecord("alpha", "alpha_mod", "optkit-alpha", "1.0")
BETA = PluginRecord("beta", "beta_mod", "optkit-beta", "2.0")

SHARPEN_PLUGIN = """
from optkit import Pass, hookimpl

class Sharpen(Pass):
    name = "sharpen"
    summary = "Sharpen, the {who} way."

    def apply(self, model, ctx):
        return model

@hookimpl
def optkit_register_passes(register):
    register(Sharpen)
"""


def test_add_get_names_and_len():
    registry: Registry[str] = Registry("pass")
    registry.add("b", "B", ALPHA)
    registry.add("a", "A", BETA)

    assert registry.get("a").obj == "A" and registry.get("a").plugin is BETA
    assert registry.names() == ["a", "b"] and len(registry) == 2
    assert [e.name for e in registry] == ["a", "b"]
    assert "a" in registry and "c" not in registry
    with pytest.raises(KeyError):
        registry.get("c")


def test_two_plugins_claiming_a_name_is_an_error_naming_both():
    registry: Registry[str] = Registry("pass")
    registry.add("sharpen", "one", ALPHA)
    registry.add("sharpen", "two", BETA)

    assert "sharpen" in registry and list(registry) == []
    with pytest.raises(PluginError) as info:
        registry.get("sharpen")
    assert str(info.value) == (
        "the pass 'sharpen' is registered by more than one plugin: optkit-alpha 1.0 (plugin 'alpha') and "
        "optkit-beta 2.0 (plugin 'beta'); disable one of them: OPTKIT_DISABLE_PLUGINS=optkit-alpha:alpha "
        "(only that plugin of optkit-alpha), or OPTKIT_DISABLE_PLUGINS=optkit-beta:beta (only that plugin of "
        "optkit-beta); or uninstall one"
    )


def test_the_same_object_registered_twice_is_not_a_conflict():
    registry: Registry[type] = Registry("pass")
    registry.add("identity", plugins_for_tests.Identity, ALPHA)
    registry.add("identity", plugins_for_tests.Identity, BETA)

    assert registry.conflicts == {}
    assert registry.get("identity").plugin is ALPHA


def test_closest_names():
    registry: Registry[int] = Registry("pass")
    for i, name in enumerate(["fuse_bn", "prune_l1", "export_onnx", "tta"]):
        registry.add(name, i, ALPHA)
    assert registry.closest("prune_l2") == ["prune_l1"]
    assert registry.closest("fusebn") == ["fuse_bn"]
    assert registry.closest("quantize") == []


@pytest.fixture
def two_sharpen_distributions(monkeypatch, tmp_path):
    write_module(monkeypatch, tmp_path, "optkit_alpha_sharpen", SHARPEN_PLUGIN.format(who="alpha"))
    write_module(monkeypatch, tmp_path, "optkit_beta_sharpen", SHARPEN_PLUGIN.format(who="beta"))
    install_fake_distributions(
        monkeypatch,
        FakeDistribution("optkit-alpha", "1.0", {"sharpen": "optkit_alpha_sharpen"}),
        FakeDistribution("optkit-beta", "2.0", {"sharpen": "optkit_beta_sharpen"}),
    )


def test_conflicting_distributions_fail_the_pipeline_that_uses_the_name(two_sharpen_distributions):
    host = Host.with_plugins(plugins_for_tests)
    text = plugins_for_tests.TINY_PIPELINE.format(passes="  - identity\n  - sharpen")

    with pytest.raises(PipelineError) as info:
        parse_pipeline(text, host.get_pass)

    assert info.value.line == 8
    assert info.value.message == (
        "stage 2: the pass 'sharpen' is registered by more than one plugin: optkit-alpha 1.0 (plugin 'sharpen') "
        "and optkit-beta 2.0 (plugin 'optkit-beta:sharpen'); disable one of them: "
        "OPTKIT_DISABLE_PLUGINS=optkit-alpha:sharpen (only that plugin of optkit-alpha), or "
        "OPTKIT_DISABLE_PLUGINS=optkit-beta:sharpen (only that plugin of optkit-beta); or uninstall one"
    )


def test_conflicting_distributions_do_not_block_other_passes(two_sharpen_distributions):
    host = Host.with_plugins(plugins_for_tests)
    pipeline = parse_pipeline(plugins_for_tests.TINY_PIPELINE.format(passes="  - identity"), host.get_pass)
    assert [s.pass_name for s in pipeline.stages] == ["identity"]


@pytest.mark.parametrize(
    ("disabled", "kept"),
    [("optkit-beta", "alpha"), ("optkit-beta:sharpen", "alpha"), ("optkit-alpha:sharpen", "beta")],
)
def test_disabling_one_distribution_resolves_the_conflict(two_sharpen_distributions, monkeypatch, disabled, kept):
    monkeypatch.setenv("OPTKIT_DISABLE_PLUGINS", disabled)
    host = Host()

    entry = host.passes.get("sharpen")
    assert (entry.plugin.distribution, entry.obj.summary) == (f"optkit-{kept}", f"Sharpen, the {kept} way.")


def test_passes_command_reports_the_conflict(two_sharpen_distributions, cli):
    result = cli("passes", "--json")

    data = json.loads(result.output)
    assert "sharpen" not in [row["name"] for row in data["passes"]]
    assert data["conflicts"]["sharpen"].startswith("the pass 'sharpen' is registered by more than one plugin: optkit-alpha 1.0")
    table = cli("passes").output
    assert "conflict: the pass 'sharpen' is registered by more than one plugin" in " ".join(table.split())
