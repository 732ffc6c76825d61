# syntax=docker/dockerfile:1
# The gateway image: a build stage makes a virtual environment with the gateway and its dependencies
# (CPU torch for the local embeddings), the runtime stage copies only that venv onto a slim Python,
# running as an unprivileged user. No compilers, no pip cache, no tests in the final image.
#
#   docker build -t llm-gateway .
#   docker run -p 8080:8080 -v $PWD/policies/default.yaml:/etc/gateway/policy.yaml:ro llm-gateway

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/gateway
WORKDIR /src
# Dependencies first (cached while only the code changes); CPU torch from its own index: the default
# index would pull a multi-GB CUDA build the gateway never uses.
COPY pyproject.toml README.md ./
RUN /opt/gateway/bin/pip install --extra-index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
    && mkdir -p gateway plugins && touch gateway/__init__.py plugins/__init__.py \
    && /opt/gateway/bin/pip install --extra-index-url https://download.pytorch.org/whl/cpu . \
    && /opt/gateway/bin/pip uninstall -y llm-gateway
COPY gateway ./gateway
COPY plugins ./plugins
RUN /opt/gateway/bin/pip install --no-deps . \
    && find /opt/gateway -name '__pycache__' -prune -exec rm -rf {} +

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="llm-gateway" \
      org.opencontainers.image.description="OpenAI-compatible gateway for language models"
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --home-dir /home/gateway --create-home gateway
COPY --from=build /opt/gateway /opt/gateway
COPY policies /etc/gateway/policies
ENV PATH=/opt/gateway/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    XDG_CACHE_HOME=/tmp/cache \
    HOST=0.0.0.0 \
    PORT=8080 \
    GATEWAY_POLICY=/etc/gateway/policies/default.yaml
USER 10001:10001
WORKDIR /home/gateway
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request,os; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/health', timeout=2)"]
# exec form, so SIGHUP (policy reload) and SIGTERM reach the gateway itself
ENTRYPOINT ["/bin/sh", "-c", "exec gateway serve --config \"$GATEWAY_POLICY\" \"$@\"", "gateway"]
