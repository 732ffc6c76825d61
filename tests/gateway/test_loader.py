"""The policy loader: YAML -> ${VAR} interpolation -> validation -> plugin options, with exact problem lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.loader import LoadedPolicy, PolicyError, load_file, load_text
from gateway.policy import AnthropicBackend, OpenAIBackend, Policy, VLLMBackend
from plugins.prompt_decorator import PromptDecoratorConfig

SECRET = "sk-live-very-secret-0123456789abcdef"

FULL_POLICY = """
backends:
  - name: local
    type: vllm
    base_url: "http://127.0.0.1:8000/v1"
    api_key: "${VLLM_KEY:-}"
    speculative: true
    timeouts: {connect_s: 2, first_byte_s: 30, idle_s: 15, total_s: 300}
  - name: openai
    type: openai
    base_url: "https://api.openai.com/v1"
    api_key: "${OPENAI_KEY}"
    max_connections: 16
    headers: {OpenAI-Organization: org-1}
  - name: claude
    type: anthropic
    api_key: "${ANTHROPIC_KEY}"
models:
  - name: local
    targets: [{backend: local, model: gemma}]
    context_window: 32768
  - name: mixed
    owned_by: team
    targets:
      - {backend: openai, model: gpt-4o-mini, weight: 3}
      - {backend: claude, model: claude-sonnet-4-5, weight: 1}
    plugins:
      - use: prompt_decorator
        system: "Be brief."
        position: append
        append_messages: [{role: user, content: "thanks"}]
plugins:
  - {use: prompt_decorator, system: "Global."}
auth:
  keys:
    - {name: team-a, key: "${TEAM_A_KEY}"}
limits: {max_body_bytes: 65536, max_messages: 32, body_read_timeout_s: 5}
telemetry: {service_name: gw, access_log: false, log_level: debug}
"""

FULL_ENV = {"OPENAI_KEY": SECRET, "ANTHROPIC_KEY": "sk-ant-1", "TEAM_A_KEY": "client-key-1"}

ONE_BACKEND = "backends: [{name: fake, type: openai, base_url: 'http://127.0.0.1:9/v1'}]\n"


def problems_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(PolicyError) as info:
        load_text(text, "policy.yaml", env={} if env is None else env)
    assert info.value.source == "policy.yaml"
    assert str(info.value).startswith("policy.yaml: invalid policy\n")
    for problem in info.value.problems:
        assert f"  - {problem}" in str(info.value)
    return info.value.problems


def one_problem(text: str, env: dict[str, str] | None = None) -> str:
    problems = problems_of(text, env)
    assert len(problems) == 1, problems
    return problems[0]


# ----------------------------------------------------------------------------- a valid policy


def test_full_valid_policy_loads_with_every_section() -> None:
    loaded = load_text(FULL_POLICY, "full.yaml", env=FULL_ENV)
    assert isinstance(loaded, LoadedPolicy)
    assert loaded.source == "full.yaml"
    policy = loaded.policy

    local, openai, claude = policy.backends
    assert isinstance(local, VLLMBackend)
    assert isinstance(openai, OpenAIBackend)
    assert isinstance(claude, AnthropicBackend)
    assert local.api_key is None  # ${VLLM_KEY:-} with the variable unset: empty, so no key
    assert local.speculative is True
    assert (local.timeouts.connect_s, local.timeouts.first_byte_s, local.timeouts.idle_s, local.timeouts.total_s) == (
        2,
        30,
        15,
        300,
    )
    assert openai.api_key is not None and openai.api_key.get_secret_value() == SECRET
    assert openai.max_connections == 16
    assert openai.headers == {"openai-organization": "org-1"}  # header names ignore case: kept lower-cased
    assert openai.timeouts.connect_s == 5.0  # the default
    assert claude.api_key is not None and claude.api_key.get_secret_value() == "sk-ant-1"
    assert claude.base_url == "https://api.anthropic.com"
    assert claude.default_max_tokens == 4096
    assert policy.backend("claude") is claude

    assert [m.name for m in policy.models] == ["local", "mixed"]
    assert policy.models[0].context_window == 32768
    assert policy.models[0].owned_by == "gateway"
    mixed = policy.models[1]
    assert mixed.owned_by == "team"
    assert [(t.backend, t.model, t.weight) for t in mixed.targets] == [
        ("openai", "gpt-4o-mini", 3.0),
        ("claude", "claude-sonnet-4-5", 1.0),
    ]

    assert policy.auth.keys[0].name == "team-a"
    assert policy.auth.keys[0].key.get_secret_value() == "client-key-1"
    assert (policy.limits.max_body_bytes, policy.limits.max_messages, policy.limits.body_read_timeout_s) == (
        65536,
        32,
        5,
    )
    assert (policy.telemetry.service_name, policy.telemetry.access_log, policy.telemetry.log_level) == (
        "gw",
        False,
        "debug",
    )

    global_cfg = loaded.config_for(policy.plugins[0])
    assert isinstance(global_cfg, PromptDecoratorConfig)
    assert global_cfg.system == "Global."
    assert global_cfg.position == "prepend"
    model_cfg = loaded.config_for(mixed.plugins[0])
    assert isinstance(model_cfg, PromptDecoratorConfig)
    assert model_cfg.system == "Be brief."
    assert model_cfg.position == "append"
    assert [m.model_dump() for m in model_cfg.append_messages] == [{"role": "user", "content": "thanks"}]
    assert len(loaded.plugin_configs) == 2


def test_load_file_reads_the_file_and_names_it_as_source(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(FULL_POLICY, encoding="utf-8")
    loaded = load_file(path, env=FULL_ENV)
    assert loaded.source == str(path)
    assert [m.name for m in loaded.policy.models] == ["local", "mixed"]


def test_load_file_of_a_missing_file_is_a_policy_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(PolicyError) as info:
        load_file(path, env={})
    assert info.value.source == str(path)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith("cannot read the file: ")


# ----------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("text", "path", "right"),
    [
        ("modles: []\n", "modles", "models"),
        (
            "backends: [{name: a, type: openai, base_url: 'http://x/v1', bse_url: 'http://x/v1'}]\n",
            "backends[0].bse_url",
            "base_url",
        ),
        (
            "backends: [{name: a, type: openai, base_url: 'http://x/v1', timeouts: {conect_s: 1}}]\n",
            "backends[0].timeouts.conect_s",
            "connect_s",
        ),
        (
            ONE_BACKEND + "models: [{name: m, targets: [{backend: fake, model: x, weigth: 2}]}]\n",
            "models[0].targets[0].weigth",
            "weight",
        ),
        ("limits: {max_body: 5000}\n", "limits.max_body", "max_body_bytes"),
        ("telemetry: {log_levl: info}\n", "telemetry.log_levl", "log_level"),
        (
            "backends: [{name: a, type: anthropic, anthropic_verison: '2023-06-01'}]\n",
            "backends[0].anthropic_verison",
            "anthropic_version",
        ),
        (
            "backends: [{name: a, type: vllm, base_url: 'http://x/v1', metrics_ur: 'http://x/metrics'}]\n",
            "backends[0].metrics_ur",
            "metrics_url",
        ),
    ],
)
def test_unknown_key_names_its_path_and_the_right_key(text: str, path: str, right: str) -> None:
    problem = one_problem(text)
    assert problem.startswith(f"{path}: unknown key (did you mean '{right}'?); allowed: ")
    allowed = problem.split("; allowed: ", 1)[1].split(", ")
    assert right in allowed
    assert allowed == sorted(allowed)


def test_unknown_key_next_to_a_missing_required_one_reports_both() -> None:
    problems = problems_of("backends: [{name: a, type: openai, bse_url: 'http://x/v1'}]\n")
    assert "backends[0].base_url: Field required" in problems
    assert any(p.startswith("backends[0].bse_url: unknown key (did you mean 'base_url'?)") for p in problems)
    assert len(problems) == 2


def test_unknown_key_without_a_close_match_has_no_suggestion() -> None:
    problem = one_problem("limits: {zzzzzz: 1}\n")
    assert problem == (
        "limits.zzzzzz: unknown key; allowed: body_read_timeout_s, default_completion_tokens, fail_open, "
        "max_body_bytes, max_messages, namespace, redis_timeout_ms, redis_url, retry_after_s, store"
    )


# ----------------------------------------------------------------------------- references and names


def test_unknown_backend_type() -> None:
    problem = one_problem("backends: [{name: a, type: gemini, base_url: 'http://x/v1'}]\n")
    assert problem == "backends[0]: type must be one of 'openai', 'vllm', 'anthropic'"


def test_target_naming_an_unknown_backend_gets_a_suggestion() -> None:
    text = ONE_BACKEND + "models: [{name: m, targets: [{backend: fake, model: x}, {backend: fak, model: y}]}]\n"
    assert one_problem(text) == "models[0].targets[1].backend: unknown backend 'fak' (did you mean 'fake'?)"


def test_target_naming_an_unrelated_backend_has_no_suggestion() -> None:
    text = ONE_BACKEND + "models: [{name: m, targets: [{backend: zzzz, model: x}]}]\n"
    assert one_problem(text) == "models[0].targets[0].backend: unknown backend 'zzzz'"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "backends: [{name: a, type: openai, base_url: 'http://x/v1'},"
            " {name: a, type: vllm, base_url: 'http://y/v1'}]",
            "backends: the name 'a' is used twice",
        ),
        (
            ONE_BACKEND + "models: [{name: m, targets: [{backend: fake, model: x}]}, "
            "{name: m, targets: [{backend: fake, model: y}]}]",
            "models: the name 'm' is used twice",
        ),
        ("auth: {keys: [{name: a, key: k1}, {name: a, key: k2}]}", "auth.keys: the name 'a' is used twice"),
    ],
)
def test_duplicate_names(text: str, expected: str) -> None:
    assert one_problem(text) == expected


def test_all_targets_weighted_zero_is_an_error() -> None:
    text = ONE_BACKEND + "models: [{name: m, targets: [{backend: fake, model: x, weight: 0}]}]\n"
    assert one_problem(text) == "models[0].targets: at least one target needs a weight above 0"


# ----------------------------------------------------------------------------- ${VAR} interpolation


def _backend_with(value: str, field: str = "api_key") -> str:
    return f"backends: [{{name: a, type: openai, base_url: 'http://x/v1', {field}: '{value}'}}]\n"


def _api_key(loaded: LoadedPolicy) -> str | None:
    key = loaded.policy.backends[0].api_key
    return None if key is None else key.get_secret_value()


def test_variable_is_substituted_from_the_given_env() -> None:
    assert _api_key(load_text(_backend_with("${KEY}"), env={"KEY": "abc"})) == "abc"


def test_variable_inside_a_longer_string_and_several_in_one_value() -> None:
    loaded = load_text(_backend_with("http://${HOST}:${PORT}/v1", "base_url"), env={"HOST": "h", "PORT": "81"})
    assert loaded.policy.backends[0].base_url == "http://h:81/v1"  # type: ignore[union-attr]


def test_default_used_when_the_variable_is_unset_or_empty() -> None:
    text = _backend_with("${KEY:-fallback}")
    assert _api_key(load_text(text, env={})) == "fallback"
    assert _api_key(load_text(text, env={"KEY": "set"})) == "set"
    assert _api_key(load_text(text, env={"KEY": ""})) == "fallback"  # like the shell's ${KEY:-fallback}


def test_variable_set_but_empty_without_default_is_no_key_and_no_error() -> None:
    assert _api_key(load_text(_backend_with("${KEY}"), env={"KEY": ""})) is None


def test_empty_default_gives_no_key() -> None:
    assert _api_key(load_text(_backend_with("${KEY:-}"), env={})) is None


def test_interpolated_number_is_validated_as_a_number() -> None:
    text = "backends: [{name: a, type: openai, base_url: 'http://x/v1', max_connections: '${CONN}'}]\n"
    assert load_text(text, env={"CONN": "7"}).policy.backends[0].max_connections == 7
    assert one_problem(text, env={"CONN": "many"}).startswith("backends[0].max_connections: ")


def test_double_dollar_is_a_literal_dollar() -> None:
    assert _api_key(load_text(_backend_with("pa$$word"), env={})) == "pa$word"
    assert _api_key(load_text(_backend_with("$${KEY}"), env={"KEY": "no"})) == "${KEY}"
    assert _api_key(load_text(_backend_with("a$b"), env={})) == "a$b"  # a lone $ is left alone


def test_substituted_values_are_not_interpolated_again_nor_parsed_as_yaml() -> None:
    env = {"KEY": "sk-${OTHER}: # not yaml"}
    assert _api_key(load_text(_backend_with("${KEY}"), env=env)) == "sk-${OTHER}: # not yaml"


def test_missing_variable_names_the_variable_and_path() -> None:
    text = ONE_BACKEND + "models: [{name: m, targets: [{backend: fake, model: '${MODEL_NAME}'}]}]\n"
    assert one_problem(text) == (
        "models[0].targets[0].model: environment variable MODEL_NAME is not set (write ${MODEL_NAME:-} to allow empty)"
    )


def test_every_missing_variable_is_reported() -> None:
    text = "backends: [{name: a, type: openai, base_url: '${URL}', api_key: '${KEY}'}]\n"
    problems = problems_of(text)
    assert [p.split(" is not set")[0] for p in problems] == [
        "backends[0].base_url: environment variable URL",
        "backends[0].api_key: environment variable KEY",
    ]


def test_env_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_TEST_LOADER_KEY", "from-os")
    assert _api_key(load_text(_backend_with("${GATEWAY_TEST_LOADER_KEY}"))) == "from-os"


_KEYED_BACKEND = "backends:\n  - {name: openai, type: openai, base_url: 'http://x/v1', api_key: '${OPENAI_KEY}'%s}\n"


@pytest.mark.parametrize(
    "text",
    [
        # The secret is itself the value that fails, so pydantic's error input is the secret.
        "backends: [{name: openai, type: openai, base_url: 'http://x/v1', api_kye: '${OPENAI_KEY}'}]\n",
        _KEYED_BACKEND % ", headers: '${OPENAI_KEY}'",
        _KEYED_BACKEND % ", max_connections: '${OPENAI_KEY}'",
        _KEYED_BACKEND % "" + "plugins: [{use: prompt_decorator, sytem: '${OPENAI_KEY}', position: '${OPENAI_KEY}'}]\n",
        "auth: {keys: [{name: k, key: '${OPENAI_KEY}', kye: '${OPENAI_KEY}'}]}\n",
        # Policy-level checks see the whole document, secret included.
        _KEYED_BACKEND % "" + "models: [{name: m, targets: [{backend: opnai, model: x}]}]\n",
        _KEYED_BACKEND % "" + "auth: {keys: [{name: k, key: '${OPENAI_KEY}'}, {name: k, key: '${OPENAI_KEY}'}]}\n",
        # Errors found before validation, next to a good secret.
        _KEYED_BACKEND % ", headers: {X: '${MISSING_VAR}'}",
        _KEYED_BACKEND % ", bse_url: x, timeouts: {conect_s: 1, idle_s: -1}",
    ],
)
def test_api_key_from_the_env_never_appears_in_error_messages(text: str) -> None:
    with pytest.raises(PolicyError) as info:
        load_text(text, "p.yaml", env={"OPENAI_KEY": SECRET})
    assert info.value.problems
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)
    assert all(SECRET not in p for p in info.value.problems)


def test_api_key_is_not_shown_by_the_loaded_policy_repr() -> None:
    loaded = load_text(FULL_POLICY, env=FULL_ENV)
    assert SECRET not in repr(loaded)
    assert SECRET not in str(loaded.policy)


# ----------------------------------------------------------------------------- backend headers and keys


def _headers(value: str) -> str:
    return f"backends: [{{name: a, type: openai, base_url: 'http://x/v1', headers: {value}}}]\n"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('{X-Org: "acme\\r\\nX-Injected: 1"}', "header 'X-Org': the value holds a line break or NUL"),
        ('{X-Org: "a\\u0000b"}', "header 'X-Org': the value holds a line break or NUL"),
        ("{'bad name': x}", "'bad name' is not an HTTP header name"),
        ("{'X-Org:': x}", "'X-Org:' is not an HTTP header name"),
        ("{'': x}", "'' is not an HTTP header name"),
        ("{Content-Length: '5'}", "header 'Content-Length' is set by the gateway itself"),
        ("{transfer-encoding: chunked}", "header 'transfer-encoding' is set by the gateway itself"),
        ("{Host: evil}", "header 'Host' is set by the gateway itself"),
        ("{X-A: '1', x-a: '2'}", "header 'x-a' is given twice (header names ignore case)"),
    ],
)
def test_headers_that_cannot_be_sent_are_refused_at_load(value: str, expected: str) -> None:
    problem = one_problem(_headers(value))
    assert problem.startswith("backends[0].headers: ") and expected in problem, problem


def test_header_names_are_kept_lower_cased_and_values_as_given() -> None:
    loaded = load_text(_headers("{X-Org: acme, api-key: 'k ey', Content-Type: 'application/json; x=1'}"), env={})
    assert loaded.policy.backends[0].headers == {
        "x-org": "acme",
        "api-key": "k ey",
        "content-type": "application/json; x=1",
    }


def test_a_key_read_with_its_newline_is_trimmed_and_one_with_an_inner_line_break_refused() -> None:
    assert _api_key(load_text(_backend_with("${KEY}"), env={"KEY": "  sk-abc\n"})) == "sk-abc"
    problem = one_problem(_backend_with("${KEY}"), env={"KEY": SECRET + "\nX-Injected: 1"})
    assert problem == "backends[0].api_key: the key holds a line break or NUL and cannot be sent in a header"


def test_a_header_value_from_the_env_never_appears_in_its_error() -> None:
    problem = one_problem(_headers("{api-key: '${AZURE_KEY}'}"), env={"AZURE_KEY": SECRET + "\r\n"})
    assert SECRET not in problem and "api-key" in problem


# ----------------------------------------------------------------------------- plugins


def test_unknown_plugin_gets_a_suggestion() -> None:
    assert one_problem("plugins: [{use: prompt_decoratr}]\n") == (
        "plugins[0].use: unknown plugin 'prompt_decoratr' (did you mean 'prompt_decorator'?)"
    )


def test_plugin_option_errors_carry_the_plugin_entry_path() -> None:
    problem = one_problem("plugins: [{use: prompt_decorator, system: ok}, {use: prompt_decorator, sytem: hi}]\n")
    assert problem.startswith("plugins[1].sytem: unknown key (did you mean 'system'?); allowed: ")
    assert problem.endswith("allowed: append_messages, position, prepend_messages, system")


def test_per_model_plugin_errors_carry_the_model_path() -> None:
    text = ONE_BACKEND + (
        "models:\n"
        "  - {name: m, targets: [{backend: fake, model: x}]}\n"
        "  - name: n\n"
        "    targets: [{backend: fake, model: x}]\n"
        "    plugins:\n"
        "      - {use: prompt_decorator, position: middle}\n"
        "      - {use: prompt_decorator, prepend_messages: [{role: user, contnt: hi}]}\n"
        "      - {use: prompt_decoratr}\n"
    )
    problems = problems_of(text)
    assert problems[0] == "models[1].plugins[0].position: Input should be 'prepend' or 'append'"
    assert "models[1].plugins[1].prepend_messages[0].content: Field required" in problems
    assert any(
        p.startswith("models[1].plugins[1].prepend_messages[0].contnt: unknown key (did you mean 'content'?)")
        for p in problems
    )
    assert (
        problems[-1] == "models[1].plugins[2].use: unknown plugin 'prompt_decoratr' (did you mean 'prompt_decorator'?)"
    )
    assert len(problems) == 4


def test_plugin_entry_without_use() -> None:
    assert one_problem("plugins: [{system: hi}]\n") == "plugins[0].use: Field required"


# ----------------------------------------------------------------------------- file-level shapes


def test_invalid_yaml() -> None:
    problem = one_problem("backends: [\n")
    assert problem.startswith("not valid YAML: ")


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(text: str) -> None:
    assert one_problem(text) == "the top level must be a mapping (backends:, models:, plugins:, ...)"


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_empty_file_is_a_valid_empty_policy(text: str) -> None:
    loaded = load_text(text, env={})
    assert loaded.policy == Policy()
    assert loaded.policy.backends == [] and loaded.policy.models == [] and loaded.policy.plugins == []
    assert loaded.policy.auth.keys == []
    assert loaded.plugin_configs == {}


def test_empty_api_key_is_none() -> None:
    assert _api_key(load_text(_backend_with(""), env={})) is None


def test_empty_client_key_is_an_error() -> None:
    assert one_problem("auth: {keys: [{name: a, key: ''}]}\n") == "auth.keys[0].key: an API key must not be empty"


# ----------------------------------------------------------------------------- property: only PolicyError escapes

_NAMES = [
    "backends",
    "models",
    "plugins",
    "auth",
    "limits",
    "telemetry",
    "name",
    "type",
    "base_url",
    "api_key",
    "timeouts",
    "connect_s",
    "targets",
    "backend",
    "model",
    "weight",
    "use",
    "system",
    "position",
    "prepend_messages",
    "role",
    "content",
    "keys",
    "key",
    "max_body_bytes",
    "headers",
    "openai",
    "vllm",
    "anthropic",
    "prompt_decorator",
    "user",
    "${X}",
    "${NOPE}",
    "$$",
]
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12), st.sampled_from(_NAMES)
)
_keys = st.one_of(st.sampled_from(_NAMES), st.text(max_size=8), st.integers(), st.none(), st.booleans())
_trees = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=5),
    max_leaves=30,
)
_documents = _trees | st.fixed_dictionaries(
    {}, optional={k: _trees for k in ("backends", "models", "plugins", "auth", "limits", "telemetry")}
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_documents)
def test_any_yaml_document_loads_or_raises_policy_error(document: Any) -> None:
    text = yaml.safe_dump(document)
    try:
        loaded = load_text(text, "fuzz.yaml", env={"X": "1"})
    except PolicyError as exc:
        assert exc.problems
        assert all(isinstance(p, str) and p for p in exc.problems)
    else:
        assert isinstance(loaded.policy, Policy)
