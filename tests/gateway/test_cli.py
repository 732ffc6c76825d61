"""The `gateway` command, run as a real subprocess: help, validate, schema, plugins, serve and SIGHUP reload."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.upstream import FakeUpstream
from tests.gateway_server import free_port

_SCRIPT = Path(sys.executable).parent / "gateway"
GATEWAY = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "gateway.cli"]

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGHUP and the console script are POSIX-only")


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GATEWAY, *args], capture_output=True, text=True, timeout=60, cwd=cwd, env=env or dict(os.environ)
    )


def policy(upstream_url: str, *models: tuple[str, str], plugins: str = "[]") -> str:
    routes = "\n".join(
        f"  - {{name: {name}, targets: [{{backend: fake, model: {target}}}]}}" for name, target in models
    )
    return (
        "backends:\n"
        "  - name: fake\n"
        "    type: openai\n"
        f"    base_url: '{upstream_url}/v1'\n"
        "    timeouts: {connect_s: 2, first_byte_s: 5, idle_s: 5, total_s: 30}\n"
        f"models:\n{routes}\n"
        f"plugins: {plugins}\n"
    )


BROKEN = "backends: []\nmodels: [{name: x, targets: [{backend: fake, model: y, weigth: 1}]}]\n"


# ----------------------------------------------------------------------------- one-shot commands


def test_help_lists_the_commands(tmp_path: Path) -> None:
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for command in ("serve", "validate", "schema", "plugins"):
        assert f"\n  {command} " in result.stdout
    assert "SIGHUP reloads it" in result.stdout


def test_no_command_prints_help_and_exits_2(tmp_path: Path) -> None:
    result = run_cli(cwd=tmp_path)
    assert result.returncode == 2
    assert "usage: gateway" in result.stdout


def test_validate_good_policy(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(policy("http://127.0.0.1:9", ("a", "x"), ("b", "y"), plugins="[{use: prompt_decorator}]"))
    result = run_cli("validate", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{path}: ok (1 backends, 2 models, 1 global plugins)\n"


def test_validate_bad_policy_names_the_problem_paths(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "modles: []\nbackends: [{name: a, type: openai, base_url: 'http://x/v1', timeouts: {conect_s: 1}}]\n"
    )
    result = run_cli("validate", str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"{path}: invalid policy\n")
    assert "  - modles: unknown key (did you mean 'models'?)" in result.stderr
    assert "  - backends[0].timeouts.conect_s: unknown key (did you mean 'connect_s'?)" in result.stderr


def test_validate_reports_a_missing_variable_without_echoing_secrets(tmp_path: Path) -> None:
    secret = "sk-cli-secret-00112233"
    path = tmp_path / "env.yaml"
    path.write_text(
        "backends: [{name: a, type: openai, base_url: '${GW_TEST_URL}', api_key: '${GW_TEST_KEY}', bse_url: x}]\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "GW_TEST_URL"} | {"GW_TEST_KEY": secret}
    result = run_cli("validate", str(path), cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert "backends[0].base_url: environment variable GW_TEST_URL is not set" in result.stderr
    assert secret not in result.stderr + result.stdout


def test_validate_missing_file(tmp_path: Path) -> None:
    result = run_cli("validate", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert result.returncode == 1
    assert "cannot read the file" in result.stderr


def _prompt_decorator_variant(schema: dict[str, Any]) -> dict[str, Any]:
    variants = schema["$defs"]["PluginEntry"]["oneOf"]
    (variant,) = [v for v in variants if v["title"] == "prompt_decorator"]
    return variant  # type: ignore[no-any-return]


def test_schema_includes_plugin_options(tmp_path: Path) -> None:
    result = run_cli("schema", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "LLM gateway policy"
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"backends", "models", "plugins", "auth", "limits", "server", "telemetry"}
    variant = _prompt_decorator_variant(schema)
    assert variant["properties"]["use"] == {"const": "prompt_decorator"}
    assert set(variant["properties"]) == {"use", "system", "position", "prepend_messages", "append_messages"}
    assert variant["properties"]["position"]["enum"] == ["prepend", "append"]
    assert variant["required"] == ["use"]
    assert variant["additionalProperties"] is False
    assert variant["properties"]["prepend_messages"]["items"] == {"$ref": "#/$defs/Message"}
    assert set(schema["$defs"]["Message"]["properties"]) == {"role", "content"}
    # Model routes' plugin lists point at the same definition.
    assert schema["$defs"]["ModelRoute"]["properties"]["plugins"]["items"] == {"$ref": "#/$defs/PluginEntry"}


def test_schema_to_a_file(tmp_path: Path) -> None:
    out = tmp_path / "schema.json"
    result = run_cli("schema", "-o", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert _prompt_decorator_variant(json.loads(out.read_text()))["title"] == "prompt_decorator"


def test_plugins_lists_prompt_decorator(tmp_path: Path) -> None:
    result = run_cli("plugins", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    assert "prompt_decorator" in names


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (BROKEN, "  - models[0].targets[0].weigth: unknown key (did you mean 'weight'?)"),
        ("plugins: [{use: prompt_decoratr}]\n", "plugins[0].use: unknown plugin 'prompt_decoratr'"),
    ],
)
def test_serve_with_a_bad_policy_exits_1(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = run_cli("serve", "--config", str(path), "--port", str(free_port()), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith(f"{path}: invalid policy\n")
    assert expected in result.stderr


def test_serve_with_a_missing_policy_exits_1(tmp_path: Path) -> None:
    result = run_cli("serve", "--config", str(tmp_path / "absent.yaml"), "--port", str(free_port()), cwd=tmp_path)
    assert result.returncode == 1
    assert "cannot read the file" in result.stderr


# ----------------------------------------------------------------------------- serve


class Served:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path, config: Path) -> None:
        self.process = process
        self.port = port
        self.log = log
        self.config = config

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.url + path, json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def models(self) -> list[str]:
        status, body = self.get("/v1/models")
        assert status == 200
        return [m["id"] for m in body["data"]]

    def reload(self, text: str) -> None:
        self.config.write_text(text)
        self.process.send_signal(signal.SIGHUP)

    def wait_for(self, condition: Callable[[], bool], seconds: float, what: str) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            assert self.process.poll() is None, f"the gateway exited:\n{self.log.read_text()}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{self.log.read_text()}"
            time.sleep(0.05)

    def healthy(self) -> bool:
        with contextlib.suppress(OSError):
            return self.get("/health") == (200, {"status": "ok"})
        return False


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(text: str, wait: bool = True) -> Served:
        """`wait=False`: return as soon as the process runs (not yet serving)."""
        config = tmp_path / f"policy-{len(started)}.yaml"
        config.write_text(text)
        log = tmp_path / f"serve-{len(started)}.log"
        port = free_port()
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [*GATEWAY, "serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
            )
        served = Served(process, port, log, config)
        started.append(served)
        if wait:
            served.wait_for(served.healthy, 15, "/health")
        return served

    yield start
    for served in started:
        if served.process.poll() is None:
            served.process.terminate()
            try:
                served.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                served.process.kill()
                served.process.wait(timeout=5)


def test_serve_answers_health_and_models(serve: Callable[[str], Served], upstream: FakeUpstream) -> None:
    served = serve(policy(upstream.url, ("a", "echo-model")))
    assert served.get("/health") == (200, {"status": "ok"})
    assert served.models() == ["a"]
    status, ready = served.get("/ready")
    assert status == 200
    assert ready["policy"] == {"source": str(served.config), "reloads": 0, "last_reload_error": None}
    assert f"gateway: serving 1 models on http://127.0.0.1:{served.port}/v1" in served.log.read_text()
    status, answer = served.post("/v1/chat/completions", {"model": "a", "messages": [{"role": "user", "content": "x"}]})
    assert status == 200
    assert answer["choices"][0]["message"]["content"] == "echo: x"


def test_sighup_while_starting_is_replayed_once_the_server_is_up(
    serve: Callable[..., Served], upstream: FakeUpstream
) -> None:
    # embedding_guard loads its model in the start-up phase: seconds in which SIGHUP's default action
    # (terminate) used to kill the server before its own handler was installed.
    guarded = policy(upstream.url, ("a", "echo-model"), plugins="[{use: embedding_guard, preset: prompt_injection}]")
    served = serve(guarded, wait=False)
    served.wait_for(lambda: "gateway: serving" in served.log.read_text(), 30, "the start-up line")
    assert not served.healthy(), "the server came up before the signal: this test needs a slower start"
    served.reload(policy(upstream.url, ("b", "echo-model")))
    served.wait_for(served.healthy, 120, "/health after a SIGHUP during start-up")
    served.wait_for(lambda: served.models() == ["b"], 30, "model b from the file read again")
    assert served.get("/ready")[1]["policy"]["reloads"] == 1
    assert "SIGHUP received while starting" in served.log.read_text()


def test_sighup_reloads_the_policy_and_keeps_it_when_the_new_one_is_broken(
    serve: Callable[[str], Served], upstream: FakeUpstream
) -> None:
    served = serve(policy(upstream.url, ("a", "echo-model")))
    assert served.models() == ["a"]

    served.reload(policy(upstream.url, ("b", "echo-model")))
    served.wait_for(lambda: served.models() == ["b"], 10, "model b after SIGHUP")
    assert served.get("/ready")[1]["policy"]["reloads"] == 1
    assert served.get("/ready")[1]["policy"]["last_reload_error"] is None
    status, _ = served.post("/v1/chat/completions", {"model": "a", "messages": [{"role": "user", "content": "x"}]})
    assert status == 404
    status, answer = served.post("/v1/chat/completions", {"model": "b", "messages": [{"role": "user", "content": "x"}]})
    assert status == 200 and answer["choices"][0]["message"]["content"] == "echo: x"

    served.reload(BROKEN)
    served.wait_for(lambda: served.get("/ready")[1]["policy"]["last_reload_error"] is not None, 10, "reload error")
    state = served.get("/ready")[1]["policy"]
    assert state["reloads"] == 1
    assert state["last_reload_error"].startswith(f"{served.config}: invalid policy\n")
    assert "models[0].targets[0].weigth: unknown key (did you mean 'weight'?)" in state["last_reload_error"]
    assert served.models() == ["b"]
    assert served.post("/v1/chat/completions", {"model": "b", "messages": [{"role": "user", "content": "x"}]})[0] == 200
    assert served.process.poll() is None

    # A fixed file is picked up again and clears the error.
    served.reload(policy(upstream.url, ("c", "echo-model")))
    served.wait_for(lambda: served.models() == ["c"], 10, "model c after SIGHUP")
    assert served.get("/ready")[1]["policy"] == {"source": str(served.config), "reloads": 2, "last_reload_error": None}


def _read_event(response: http.client.HTTPResponse) -> str:
    """The data of the next SSE event (the gateway always writes `data: ...\\n\\n`)."""
    line = response.readline()
    assert line.startswith(b"data: "), line
    assert response.readline() == b"\n"
    return line[len(b"data: ") : -1].decode()


def test_request_in_flight_during_a_reload_completes(serve: Callable[[str], Served], upstream: FakeUpstream) -> None:
    served = serve(policy(upstream.url, ("slow", "slow-stream-50"), ("a", "echo-model")))
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    body = {"model": "slow", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    assert response.getheader("content-type", "").startswith("text/event-stream")

    content: list[str] = []
    finish: list[str] = []

    def consume(data: str) -> None:
        chunk = json.loads(data)
        for choice in chunk["choices"]:
            content.append(choice["delta"].get("content") or "")
            if choice["finish_reason"]:
                finish.append(choice["finish_reason"])

    for _ in range(4):  # the role chunk and three words: the stream is under way
        consume(_read_event(response))

    served.reload(policy(upstream.url, ("slow", "slow-stream-50"), ("b", "echo-model")))
    served.wait_for(lambda: sorted(served.models()) == ["b", "slow"], 10, "reload")
    assert served.get("/ready")[1]["policy"]["reloads"] == 1

    after_reload = 0
    while (data := _read_event(response)) != "[DONE]":
        consume(data)
        after_reload += 1
    connection.close()

    assert after_reload > 0, "the stream had already finished when the reload took effect"
    words = ["echo:", "hi", *(f"w{i}" for i in range(2, 50))]
    assert "".join(content) == " ".join(words)
    assert finish == ["stop"]
    assert "Traceback" not in served.log.read_text()
