"""Plugins are found by name: built-ins in plugins/, third-party ones through entry points."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import registry
from gateway.loader import PolicyError, load_text
from gateway.plugin import Plugin
from plugins.prompt_decorator import PromptDecorator


@pytest.fixture
def third_party(tmp_path: Path) -> Iterator[str]:
    """A real installed distribution (dist-info with entry_points.txt) on sys.path."""
    (tmp_path / "acme_guard.py").write_text(
        textwrap.dedent(
            """
            from gateway.plugin import Plugin, PluginConfig

            class AcmeConfig(PluginConfig):
                level: int = 1

            class AcmeGuard(Plugin):
                '''A third-party plugin.'''
                name = "acme_guard"
                Config = AcmeConfig

            class NotAPlugin:
                pass
            """
        )
    )
    dist = tmp_path / "acme_guard-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-guard\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[llm_gateway.plugins]\nacme_guard = acme_guard:AcmeGuard\nbroken = acme_guard:NotAPlugin\n"
    )
    sys.path.insert(0, str(tmp_path))
    registry.get.cache_clear()
    try:
        yield "acme_guard"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("acme_guard", None)
        registry.get.cache_clear()


def test_builtin_found_by_folder_name() -> None:
    assert registry.get("prompt_decorator") is PromptDecorator
    assert "prompt_decorator" in registry.available()


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(registry.PluginNotFound, match="did you mean 'prompt_decorator'"):
        registry.get("prompt_decoratr")


def test_entry_point_plugin_is_discovered_and_configured(third_party: str) -> None:
    cls = registry.get(third_party)
    assert issubclass(cls, Plugin) and cls.__name__ == "AcmeGuard"
    assert third_party in registry.available()
    loaded = load_text(
        "backends: [{name: b, type: openai, base_url: 'http://127.0.0.1:1/v1'}]\n"
        "models: [{name: m, targets: [{backend: b, model: x}]}]\n"
        "plugins: [{use: acme_guard, level: 3}]\n"
    )
    assert loaded.config_for(loaded.policy.plugins[0]).level == 3  # type: ignore[attr-defined]


def test_entry_point_that_is_not_a_plugin_is_rejected(third_party: str) -> None:
    with pytest.raises(registry.PluginNotFound, match=r"not name a gateway\.plugin\.Plugin subclass"):
        registry.get("broken")
    with pytest.raises(PolicyError, match=r"plugins\[0\]\.use"):
        load_text("plugins: [{use: broken}]")
