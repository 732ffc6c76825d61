"""The `gateway` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from gateway import logs
from gateway.loader import PolicyError, load_file
from gateway.requestlog import cli as logs_cli
from gateway.startup_signals import remember_reloads_while_starting

DEFAULT_POLICY = Path(__file__).resolve().parent.parent / "policies" / "default.yaml"

HELP = """\
An OpenAI-compatible gateway for language models. Point any OpenAI SDK at
http://HOST:PORT/v1 and change nothing else.

commands:
  serve      run the gateway with a policy file (SIGHUP reloads it)
  validate   check a policy file; exits 1 naming every problem
  schema     print the JSON Schema of policy files (for editor completion)
  plugins    list the plugins this installation can load
  rag        build and inspect RAG indexes: ingest, versions, rollback, publish, search, eval
  logs       tail and filter the request log (telemetry.request_log)
  vllm       vllm command --backend NAME: the vLLM launch line of a backend
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway", description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gateway", description="Run the gateway with a policy file.")
    serve.add_argument("--config", "-c", default=str(DEFAULT_POLICY), help="policy YAML (default: %(default)s)")
    serve.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"), help="address to bind (env HOST)")
    serve.add_argument(
        "--port", type=int, default=int(os.environ.get("PORT", "8080")), help="port (env PORT, default 8080)"
    )
    serve.add_argument("--log-level", default=None, help="override telemetry.log_level from the policy")
    serve.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("WORKERS", "1")),
        help="processes sharing the port via SO_REUSEPORT (env WORKERS, default 1); each loads the policy, "
        "so state shared across workers (caches, limits) needs Redis",
    )

    validate = sub.add_parser(
        "validate",
        help="check a policy file",
        description="Check a policy file; exit 1 naming every problem.",
    )
    validate.add_argument("file", help="policy YAML")

    schema = sub.add_parser("schema", help="print the policy JSON Schema", description="Print the policy JSON Schema.")
    schema.add_argument("--output", "-o", help="write to this file instead of stdout")

    sub.add_parser("plugins", help="list available plugins", description="List the plugins that can be loaded.")
    from gateway.rag.commands import add_parser as add_rag_parser

    add_rag_parser(sub)
    logs_cli.add_parser(sub)

    from gateway.vllm_launch import add_parser as add_vllm_parser

    add_vllm_parser(sub, str(DEFAULT_POLICY))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "validate":
        return _validate(args.file)
    if args.command == "schema":
        from gateway.schema import policy_schema

        text = json.dumps(policy_schema(), indent=2) + "\n"
        if args.output:
            Path(args.output).write_text(text, encoding="utf-8")
        else:
            sys.stdout.write(text)
        return 0
    if args.command == "vllm":
        from gateway.vllm_launch import run_cli

        return run_cli(args)
    if args.command == "logs":
        return logs_cli.run(args)
    if args.command == "rag":
        from gateway.rag.commands import run as run_rag

        return run_rag(args)
    if args.command == "plugins":
        from gateway import registry

        for name in registry.available():
            doc = (registry.get(name).__doc__ or "").strip().splitlines()
            print(f"{name:24} {doc[0] if doc else ''}")
        return 0
    _parser().print_help()
    return 2


def _validate(path: str) -> int:
    try:
        loaded = load_file(path)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    policy = loaded.policy
    print(
        f"{path}: ok ({len(policy.backends)} backends, {len(policy.models)} models, "
        f"{len(policy.plugins)} global plugins)"
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    remember_reloads_while_starting()
    try:
        loaded = load_file(args.config)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    level = (args.log_level or loaded.policy.telemetry.log_level).upper()
    logs.configure(level)

    import uvicorn

    from gateway.server import create_app, entry
    from gateway.workers import UVICORN_OPTIONS, serve_workers

    print(
        f"gateway: serving {len(loaded.policy.models)} models on http://{args.host}:{args.port}/v1 "
        f"(policy {args.config}{f', {args.workers} workers' if args.workers > 1 else ''})",
        file=sys.stderr,
        flush=True,
    )
    if args.workers > 1:
        return serve_workers(args.config, args.host, args.port, level, args.workers)
    app = entry(create_app(loaded, args.config))
    uvicorn.run(app, host=args.host, port=args.port, log_level=level.lower(), **UVICORN_OPTIONS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
