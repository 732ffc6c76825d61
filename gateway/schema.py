"""JSON Schema of policy files, including each available plugin's options."""

from __future__ import annotations

from typing import Any

from gateway import registry
from gateway.policy import Policy


def policy_schema() -> dict[str, Any]:
    schema = Policy.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "LLM gateway policy"
    variants = []
    for name in registry.available():
        options = registry.get(name).Config.model_json_schema(mode="validation")
        defs = options.pop("$defs", {})
        schema.setdefault("$defs", {}).update(defs)
        properties = {"use": {"const": name}, **options.get("properties", {})}
        variants.append(
            {
                "type": "object",
                "title": name,
                "description": (registry.get(name).__doc__ or "").strip(),
                "properties": properties,
                "required": ["use", *options.get("required", [])],
                "additionalProperties": False,
            }
        )
    schema["$defs"]["PluginEntry"] = {"oneOf": variants} if variants else schema["$defs"]["PluginEntry"]
    return schema
