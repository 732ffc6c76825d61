"""Finds plugins by name: built-ins in the `plugins` package, third-party ones by entry point.

A built-in lives in `plugins/<name>/` and exposes its class as `PLUGIN`. A third-party package
declares `[project.entry-points."llm_gateway.plugins"] my_plugin = "my_pkg:MyPlugin"`.
The engine never imports a plugin module directly; only this registry does.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from importlib.metadata import entry_points

from gateway.plugin import Plugin

ENTRY_POINT_GROUP = "llm_gateway.plugins"
BUILTIN_PACKAGE = "plugins"


class PluginNotFound(LookupError):
    pass


@cache
def _builtin_names() -> frozenset[str]:
    try:
        package = importlib.import_module(BUILTIN_PACKAGE)
    except ImportError:
        return frozenset()
    return frozenset(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_"))


def available() -> list[str]:
    names = set(_builtin_names())
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


@cache
def get(name: str) -> type[Plugin]:
    """The plugin class registered under `name`; raises PluginNotFound with a suggestion."""
    if name in _builtin_names():
        module = importlib.import_module(f"{BUILTIN_PACKAGE}.{name}")
        cls = getattr(module, "PLUGIN", None)
    else:
        found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        cls = found[0].load() if found else None
    if cls is None:
        from gateway.policy import did_you_mean

        raise PluginNotFound(f"unknown plugin {name!r}{did_you_mean(name, available())}")
    if not (isinstance(cls, type) and issubclass(cls, Plugin)):
        raise PluginNotFound(f"plugin {name!r} does not name a gateway.plugin.Plugin subclass")
    return cls
