"""The committed policy JSON Schema matches the code, and every shipped policy passes both checks."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gateway.loader import load_file
from gateway.schema import policy_schema

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_FILE = ROOT / "schema" / "policy.schema.json"
POLICIES = sorted([*(ROOT / "policies").glob("*.yaml"), *(ROOT / "policies").glob("*.yml")])
REGENERATE = "regenerate it with `make schema` (runs `gateway schema -o schema/policy.schema.json`) and commit it"
# ${VAR} without a default: the loader requires it to be set, so the test supplies a value.
_REQUIRED_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _committed() -> dict[str, Any]:
    assert SCHEMA_FILE.is_file(), f"{SCHEMA_FILE.relative_to(ROOT)} is missing: {REGENERATE}"
    schema: dict[str, Any] = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    return schema


def test_committed_schema_matches_the_code() -> None:
    assert _committed() == policy_schema(), f"schema/policy.schema.json is stale: {REGENERATE}"


def test_committed_schema_is_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(_committed())


def test_policies_exist() -> None:
    assert POLICIES, "policies/ holds no YAML file"


@pytest.mark.parametrize("path", POLICIES, ids=[p.name for p in POLICIES])
def test_policy_satisfies_the_schema(path: Path) -> None:
    document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    validator = jsonschema.Draft202012Validator(_committed())
    problems = [
        f"{'.'.join(str(p) for p in error.absolute_path) or '<top>'}: {error.message}"
        for error in validator.iter_errors(document)
    ]
    assert not problems, f"{path.name} does not match schema/policy.schema.json:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", POLICIES, ids=[p.name for p in POLICIES])
def test_policy_loads(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    env = {name: f"test-{name.lower()}" for name in _REQUIRED_VAR.findall(text)}
    load_file(path, env=env)  # raises PolicyError naming every problem
