"""Reading a policy file: YAML -> ${VAR} interpolation -> validation -> plugin options checked.

Every problem is reported with its path (`backends[0].base_url`) and, for a misspelt key or name,
a "did you mean". Secrets from the environment are never echoed back in messages.
"""

from __future__ import annotations

import os
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from gateway import registry
from gateway.plugin import PluginConfig
from gateway.policy import PluginEntry, Policy, did_you_mean

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class PolicyError(Exception):
    """A policy that cannot be used; `problems` holds one line per problem, each with its path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: invalid policy\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class LoadedPolicy:
    policy: Policy
    plugin_configs: dict[int, PluginConfig]  # id(PluginEntry) -> its validated options
    source: str

    def config_for(self, entry: PluginEntry) -> PluginConfig:
        return self.plugin_configs[id(entry)]


def load_file(path: str | Path, env: typing.Mapping[str, str] | None = None) -> LoadedPolicy:
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(source, [f"cannot read the file: {exc}"]) from None
    return load_text(text, source, env)


def load_text(text: str, source: str = "<policy>", env: typing.Mapping[str, str] | None = None) -> LoadedPolicy:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(source, [f"not valid YAML: {exc}"]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PolicyError(source, ["the top level must be a mapping (backends:, models:, plugins:, ...)"])
    problems: list[str] = []
    from_env: set[str] = set()
    data = _interpolate(raw, os.environ if env is None else env, "", problems, from_env)
    if problems:
        raise PolicyError(source, problems)
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(source, _redact([_describe(err) for err in exc.errors()], from_env)) from None
    configs = _plugin_configs(policy, problems)
    if problems:
        raise PolicyError(source, _redact(problems, from_env))
    return LoadedPolicy(policy, configs, source)


def _interpolate(
    node: Any, env: typing.Mapping[str, str], path: str, problems: list[str], from_env: set[str] | None = None
) -> Any:
    if isinstance(node, dict):
        return {k: _interpolate(v, env, _join(path, k), problems, from_env) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, env, f"{path}[{i}]", problems, from_env) for i, v in enumerate(node)]
    if not isinstance(node, str) or "$" not in node:
        return node

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        value = env.get(name)
        if default is not None and not value:
            return default  # like the shell: unset or empty takes the default
        if value is not None:
            if from_env is not None:
                from_env.add(value)
            return value
        problems.append(f"{path}: environment variable {name} is not set (write ${{{name}:-}} to allow empty)")
        return ""

    return _VAR.sub(substitute, node)


def _redact(problems: list[str], from_env: set[str]) -> list[str]:
    """Validators quote bad values ("unknown backend 'x'"); a value from the environment may be a secret.
    Values under 8 characters (ports, flags) are left alone: they are not keys, and hiding them hides the problem."""
    secrets = sorted((v for v in from_env if len(v) >= 8), key=len, reverse=True)
    out = []
    for problem in problems:
        for secret in secrets:
            problem = problem.replace(secret, "<value from the environment>")
        out.append(problem)
    return out


def _plugin_configs(policy: Policy, problems: list[str]) -> dict[int, PluginConfig]:
    entries = [(f"plugins[{i}]", e) for i, e in enumerate(policy.plugins)]
    for m, model in enumerate(policy.models):
        entries += [(f"models[{m}].plugins[{i}]", e) for i, e in enumerate(model.plugins)]
    configs: dict[int, PluginConfig] = {}
    for where, entry in entries:
        try:
            cls = registry.get(entry.use)
        except registry.PluginNotFound as exc:
            problems.append(f"{where}.use: {exc}")
            continue
        except Exception as exc:  # a third-party plugin that fails to import
            problems.append(f"{where}.use: plugin {entry.use!r} failed to load: {exc}")
            continue
        try:
            configs[id(entry)] = cls.Config.model_validate(entry.options)
        except ValidationError as exc:
            problems += [_describe(err, prefix=where, model=cls.Config) for err in exc.errors()]
    return configs


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _describe(err: Any, prefix: str = "", model: type[BaseModel] = Policy) -> str:
    loc = tuple(err["loc"])
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in ("openai", "vllm", "anthropic"):  # discriminated-union tags are not keys
            path = _join(path, part)
    if err["type"] == "extra_forbidden":
        allowed = _fields_at(model, loc[:-1])
        return f"{path}: unknown key{did_you_mean(str(loc[-1]), allowed)}; allowed: {', '.join(sorted(allowed))}"
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "union_tag_invalid":
        message = "type must be one of 'openai', 'vllm', 'anthropic'"
    return f"{path}: {message}" if path else message


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> set[str]:
    """Field names of the model found by following `loc` from `model` (for "did you mean")."""
    current: Any = model
    for part in loc:
        current = _unwrap(current, part)
        if current is None:
            return set()
    if isinstance(current, type) and issubclass(current, BaseModel):
        return set(current.model_fields)
    return set()


def _unwrap(tp: Any, part: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0], part)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            fields = getattr(arg, "model_fields", {})
            tag = fields.get("type")
            if tag is not None and part in typing.get_args(tag.annotation):
                return arg
        return None
    if isinstance(part, int):
        args = typing.get_args(tp)
        return args[0] if args else None
    if isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
        return tp.model_fields[part].annotation
    return None
