"""A global cache entry limited to some models with `models:` leaves the others untouched."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import openai

from tests.fakes.upstream import FakeUpstream
from tests.gateway_server import GatewayServer


def test_global_cache_applies_only_to_listed_models(
    make_gateway: Callable[[str], GatewayServer], upstream: FakeUpstream
) -> None:
    gateway = make_gateway(f"""
backends: [{{name: fake, type: openai, base_url: "{upstream.url}/v1"}}]
models:
  - {{name: cached, targets: [{{backend: fake, model: echo-model}}]}}
  - {{name: fresh, targets: [{{backend: fake, model: echo-model}}]}}
plugins: [{{use: exact_cache, models: [cached]}}]
""")
    client = openai.OpenAI(base_url=gateway.base_url, api_key="k", max_retries=0)
    prompt = [{"role": "user", "content": f"scope {uuid.uuid4().hex}"}]
    headers = [
        client.chat.completions.with_raw_response.create(model=model, messages=prompt).headers  # type: ignore[arg-type]
        for model in ("cached", "cached", "fresh", "fresh")
    ]
    assert [h.get("x-gateway-cache") for h in headers] == ["miss", "hit", None, None]
    assert [h["x-gateway-backend"] for h in headers] == ["fake", "plugin:exact_cache", "fake", "fake"]
