"""The guardrails-ai worker process: validators behind a length-prefixed JSON channel on stdin/stdout.

Run by the gateway with the interpreter of `.venv-guardrails` (guardrails-ai cannot share the gateway's
environment). Frames are a 4-byte big-endian length and a UTF-8 JSON object:

    gateway -> worker   {"op": "init", "paths": [...], "modules": [...], "runner": "validator" | "guard",
                         "validators": [{use, args, on_fail}]}
    worker  -> gateway  {"ready": true, "version": "0.11.0"} | {"fatal": "...", "config": true}
    gateway -> worker   {"id": 7, "op": "validate", "validators": [0, 2], "texts": ["...", ...]}
    worker  -> gateway  {"id": 7, "results": [{"text": "<fixed>" | null, "failures": [{index, reason}], "error": null}]}
    worker  -> gateway  {"event": "outbound", "target": "host:port", "via": "socket.connect"}   (unsolicited)
    gateway -> worker   {"op": "shutdown"}       the worker exits normally (atexit handlers run)

Guardrails' remote telemetry (hub spans to a public endpoint, on by default) is switched off before any
validator exists, and an audit hook refuses every non-loopback connection or name lookup the process tries
(telemetry, a model download, a validator calling home) and reports it as an `outbound` event.
"""

from __future__ import annotations

import importlib
import ipaddress
import json
import os
import shutil
import socket
import struct
import sys
import tempfile
import threading
from typing import Any, BinaryIO

HEADER = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024
BUILTIN_MODULE = "gateway_validators"
FIX_ACTIONS = ("fix", "fix_reask")  # guardrails computes the fixed text; every other on_fail only reports

_out_lock = threading.Lock()
_out: BinaryIO | None = None


def send(message: dict[str, Any]) -> None:
    data = json.dumps(message, ensure_ascii=False).encode()
    with _out_lock:
        if _out is None:
            return
        _out.write(HEADER.pack(len(data)) + data)
        _out.flush()


def receive(stream: BinaryIO) -> dict[str, Any] | None:
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (size,) = HEADER.unpack(header)
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes")
    body = stream.read(size)
    if len(body) < size:
        return None
    message: dict[str, Any] = json.loads(body)
    return message


# --- no outbound connections ----------------------------------------------------------------------------


def _local(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if host is None or host in ("", "localhost"):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def outbound_target(event: str, args: tuple[Any, ...]) -> str | None:
    """The non-local destination an audited socket event aims at, or None when it stays on this machine."""
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        sock, address = args[0], args[1] if len(args) > 1 else None
        if address is None or getattr(sock, "family", None) == getattr(socket, "AF_UNIX", -1):
            return None
        if isinstance(address, tuple) and not _local(address[0]):
            return f"{address[0]}:{address[1]}"
        return None
    if event == "socket.getaddrinfo":
        return None if _local(args[0]) else f"{args[0]}:{args[1]}"
    if event in ("socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr"):
        return None if _local(args[0]) else str(args[0])
    return None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not event.startswith("socket."):
        return
    target = outbound_target(event, args)
    if target is not None:
        send({"event": "outbound", "target": target, "via": event})
        raise PermissionError(f"guardrails worker: outbound connection to {target} refused")


# --- validators -------------------------------------------------------------------------------------------


class Worker:
    def __init__(self, init: dict[str, Any]) -> None:
        for path in reversed(init.get("paths") or []):
            sys.path.insert(0, os.path.abspath(path))
        self.gr: Any = importlib.import_module("guardrails")
        registry: Any = importlib.import_module("guardrails.validator_base")
        for module in [BUILTIN_MODULE, *(init.get("modules") or [])]:
            importlib.import_module(module)  # its @register_validator classes join guardrails' registry
        self.specs: list[dict[str, Any]] = list(init.get("validators") or [])
        self.validators = [self._build(registry, i, spec) for i, spec in enumerate(self.specs)]
        # runner "guard": each validator in a Guard of its own (guardrails' whole runner, ~1-3 ms a call);
        # "validator": Validator.validate directly, as that runner's validator service calls it (microseconds).
        self.guards = [self.gr.Guard().use(v) for v in self.validators] if init.get("runner") == "guard" else None

    def _build(self, registry: Any, index: int, spec: dict[str, Any]) -> Any:
        cls = registry.validators_registry.get(spec["use"])
        if cls is None:
            known = ", ".join(sorted(registry.validators_registry)) or "none"
            raise LookupError(f"validators[{index}].use: no validator registered as {spec['use']!r} (known: {known})")
        on_fail = "fix" if spec["on_fail"] in FIX_ACTIONS else "noop"
        try:
            return cls(on_fail=on_fail, **(spec.get("args") or {}))
        except TypeError as exc:
            raise LookupError(f"validators[{index}].args: {exc}") from None

    def _run(self, index: int, text: str) -> tuple[str | None, Any]:
        """(failure reason or None, the fixed text or None) of one validator on one text."""
        if self.guards is not None:
            outcome = self.guards[index].validate(text)
            failed = [s for s in outcome.validation_summaries or [] if s.validator_status == "fail"]
            reason = "; ".join(str(s.failure_reason or "failed") for s in failed) if failed else None
            return reason, outcome.validated_output
        result = self.validators[index].validate(text, {})
        if getattr(result, "outcome", "pass") != "fail":
            return None, None
        return str(getattr(result, "error_message", None) or "failed"), getattr(result, "fix_value", None)

    def validate(self, indices: list[int], text: str) -> dict[str, Any]:
        """Run the validators in order on one text; a fix feeds the next validator the fixed text."""
        current = text
        failures: list[dict[str, Any]] = []
        for index in indices:
            try:
                reason, fixed = self._run(index, current)
            except Exception as exc:
                return {"text": None, "failures": failures, "error": f"{self.specs[index]['use']}: {exc!r}"[:500]}
            if reason is None:
                continue
            failures.append({"index": index, "reason": reason[:500]})
            if self.specs[index]["on_fail"] in FIX_ACTIONS and isinstance(fixed, str):
                current = fixed
        return {"text": current if current != text else None, "failures": failures, "error": None}


def private_home() -> str:
    """A HOME of the worker's own whose `.guardrailsrc` switches hub telemetry off.

    guardrails reads `~/.guardrailsrc` at import and again in every `Guard()` (no file: metrics on), so
    the setting lives in the file `guardrails configure --disable-metrics` would write, in a HOME that
    belongs to this process. Caches stay where the real HOME has them.
    """
    real = os.path.expanduser("~")
    os.environ.setdefault("XDG_CACHE_HOME", os.path.join(real, ".cache"))
    home = os.environ.pop("GATEWAY_GUARDRAILS_HOME", "") or tempfile.mkdtemp(prefix="gateway-guardrails-")
    with open(os.path.join(home, ".guardrailsrc"), "w", encoding="utf-8") as rc:
        rc.write("enable_metrics=false\nuse_remote_inferencing=false\n")
    os.environ["HOME"] = home
    return home


def main() -> int:
    global _out
    # The channel gets a private copy of stdout; fd 1 then points at stderr, so a validator that
    # prints cannot corrupt a frame.
    _out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    sys.addaudithook(_audit)
    inp = sys.stdin.buffer
    home = private_home()
    try:
        return serve(inp)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def serve(inp: BinaryIO) -> int:
    init = receive(inp)
    if init is None:
        return 1
    importlib.import_module("guardrails")  # not installed: the worker dies, the gateway's on_error applies
    try:
        worker = Worker(init)
    except Exception as exc:  # a module that fails to import, an unknown validator, bad arguments
        send({"fatal": f"{type(exc).__name__}: {exc}", "config": True})
        return 2
    version = importlib.import_module("guardrails.version").GUARDRAILS_VERSION
    send({"ready": True, "version": str(version)})
    while (message := receive(inp)) is not None:
        if message.get("op") == "shutdown":
            break
        if message.get("op") == "validate":
            results = [worker.validate(message["validators"], text) for text in message["texts"]]
            send({"id": message["id"], "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
