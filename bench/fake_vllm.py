"""A fake vLLM server for routing benchmarks: latency comes from a simulated continuous-batching queue.

    python -m bench.fake_vllm --port 8101 --speculative [--max-batch 16] [--base-ms 12]
    python -m bench.fake_vllm --port 8102 --plain --max-batch 8 --base-ms 18

It speaks just enough of vLLM: POST /v1/chat/completions (non-streaming; the answer comes once its
simulated generation is done, as an OpenAI chat.completion with usage), GET /metrics (Prometheus
text with `vllm:num_requests_running`, `vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc`,
and for a speculative server the `vllm:spec_decode_*` counters), GET /v1/models and GET /health.
All timing is `asyncio.sleep`: no CPU is burnt, so several of these and a gateway fit on 2 cores.

The model (one engine, one scheduler loop)
-------------------------------------------
* Continuous batching: at most `max_batch` requests run; the others wait in a FIFO queue and are
  admitted at the start of the next step after a slot frees (vLLM's `max_num_seqs`).
* One engine step advances every running request together. With n requests running it takes

      plain:        step(n) = BASE * (1 + K_PLAIN * n)                          1 token per request
      speculative:  step(n) = BASE * (SPEC_FIXED + K_SPEC * n)     1 + accepted tokens per request

  plus PREFILL_MS_PER_TOKEN for every prompt token of the requests admitted at that step.
  The plain growth K_PLAIN is mild: decoding is memory-bound, so a batch of 16 makes each step only
  1.8x longer while producing 16x the tokens.
* Speculative decoding (as vLLM's n-gram / draft-model methods): each step proposes
  NUM_SPEC_TOKENS draft tokens per request; each is accepted with probability ACCEPT_PROB while
  the previous one was (so the accepted count is a truncated geometric draw; 1.77 on average,
  2.77 tokens per step). Verifying k+1 positions per request is what makes the step grow much
  faster with the batch: at low batch the GPU has idle compute, at a full batch every rejected
  draft is compute stolen from other requests.
* SPEC_FIXED and K_SPEC are not free parameters: they are solved from two facts vLLM published
  (blog "How Speculative Decoding Boosts vLLM Performance by up to 2.8x", 2024): per-token latency
  SPEEDUP_AT_1 = 2.5x lower than the plain server's with 1 request running (vLLM: up to 2.8x at
  QPS 1), and SLOWDOWN_WHEN_FULL = 1.5x higher with REFERENCE_BATCH = 16 running (vLLM: 1.4-1.8x
  slower at high QPS). With the defaults the two servers are equally fast per token at about 7
  running requests; below that the speculative one wins, above it the plain one.
* Output length: the request's `max_tokens` (default DEFAULT_MAX_TOKENS); the answer always stops
  at that length (`finish_reason: length`). Prompt tokens: characters / 4.
* KV cache: every running request holds prompt + generated tokens out of `max_batch * KV_TOKENS_PER_SLOT`
  tokens; `vllm:kv_cache_usage_perc` is that share (0..1). The cache never preempts.

With BASE = 12 ms and 64-token answers a plain server alone answers in about 0.8 s and tops out
(16 running) at about 11.6 requests/s; a speculative one answers in about 0.33 s alone and tops out
at about 7.7 requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

BASE_MS = 12.0  # plain step with an empty batch
K_PLAIN = 0.05  # plain: each running request adds 5 % to a step
NUM_SPEC_TOKENS = 4  # draft tokens proposed per request per step
ACCEPT_PROB = 0.7  # chance each draft token is accepted (given the previous one was)
SPEEDUP_AT_1 = 2.5  # speculative per-token latency with 1 running: plain / 2.5
SLOWDOWN_WHEN_FULL = 1.5  # ... with REFERENCE_BATCH running: plain * 1.5
REFERENCE_BATCH = 16
PREFILL_MS_PER_TOKEN = 0.05
KV_TOKENS_PER_SLOT = 128
DEFAULT_MAX_TOKENS = 64


def mean_tokens_per_step(drafts: int = NUM_SPEC_TOKENS, p: float = ACCEPT_PROB) -> float:
    """1 + the expected number of accepted drafts (p + p^2 + ... + p^drafts)."""
    return 1.0 + sum(p**i for i in range(1, drafts + 1))


def spec_constants() -> tuple[float, float]:
    """(SPEC_FIXED, K_SPEC) solved from SPEEDUP_AT_1 and SLOWDOWN_WHEN_FULL (see the module doc)."""
    m = mean_tokens_per_step()
    at_1 = m * (1 + K_PLAIN) / SPEEDUP_AT_1  # step units: per-token time * tokens per step
    at_full = m * (1 + K_PLAIN * REFERENCE_BATCH) * SLOWDOWN_WHEN_FULL
    k_spec = (at_full - at_1) / (REFERENCE_BATCH - 1)
    return at_1 - k_spec, k_spec


SPEC_FIXED, K_SPEC = spec_constants()  # about 0.74 and 0.42


@dataclass(slots=True)
class Request:
    prompt_tokens: int
    max_tokens: int
    done: asyncio.Future[None]
    generated: int = 0


@dataclass
class Engine:
    speculative: bool
    max_batch: int
    base_s: float
    rng: random.Random
    waiting: collections.deque[Request] = field(default_factory=collections.deque)
    running: list[Request] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    draft_tokens: int = 0
    accepted_tokens: int = 0
    drafts: int = 0
    generation_tokens: int = 0
    prompt_tokens: int = 0
    finished: int = 0

    def step_s(self, n: int) -> float:
        if self.speculative:
            return self.base_s * (SPEC_FIXED + K_SPEC * n)
        return self.base_s * (1 + K_PLAIN * n)

    def kv_usage(self) -> float:
        used = sum(r.prompt_tokens + r.generated for r in self.running)
        return min(1.0, used / (self.max_batch * KV_TOKENS_PER_SLOT))

    async def submit(self, prompt_tokens: int, max_tokens: int) -> None:
        req = Request(prompt_tokens, max_tokens, asyncio.get_running_loop().create_future())
        self.waiting.append(req)
        self.wake.set()
        try:
            await req.done
        except asyncio.CancelledError:  # the client went away: free its slot
            with contextlib.suppress(ValueError):
                self.waiting.remove(req)
            with contextlib.suppress(ValueError):
                self.running.remove(req)
            raise

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        step_end = loop.time()  # when the previous step ended
        while True:
            if not self.running and not self.waiting:
                self.wake.clear()
                await self.wake.wait()
                step_end = loop.time()
            admitted = 0
            while self.waiting and len(self.running) < self.max_batch:
                req = self.waiting.popleft()
                self.running.append(req)
                admitted += req.prompt_tokens
            step = self.step_s(len(self.running)) + admitted * PREFILL_MS_PER_TOKEN / 1000
            # A virtual clock: this step ends one step after the previous one ended, however late the
            # loop woke, so event-loop jitter does not slow the simulated server down (the debt it
            # may catch up is capped at one step).
            step_end = max(step_end + step, loop.time() - step)
            await asyncio.sleep(max(0.0, step_end - loop.time()))
            for req in list(self.running):
                if req.done.done():  # cancelled while running
                    self.running.remove(req)
                    continue
                tokens = 1
                if self.speculative:
                    accepted = 0
                    while accepted < NUM_SPEC_TOKENS and self.rng.random() < ACCEPT_PROB:
                        accepted += 1
                    self.drafts += 1
                    self.draft_tokens += NUM_SPEC_TOKENS
                    self.accepted_tokens += accepted
                    tokens += accepted
                tokens = min(tokens, req.max_tokens - req.generated)
                req.generated += tokens
                self.generation_tokens += tokens
                if req.generated >= req.max_tokens:
                    self.running.remove(req)
                    self.prompt_tokens += req.prompt_tokens
                    self.finished += 1
                    req.done.set_result(None)

    def metrics(self, model: str) -> str:
        labels = f'engine="0",model_name="{model}"'
        lines = [
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{{{labels}}} {len(self.running)}",
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{{{labels}}} {len(self.waiting)}",
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{{{labels}}} {self.kv_usage():.6f}",
            "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
            "# TYPE vllm:prompt_tokens_total counter",
            f"vllm:prompt_tokens_total{{{labels}}} {self.prompt_tokens}",
            "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
            "# TYPE vllm:generation_tokens_total counter",
            f"vllm:generation_tokens_total{{{labels}}} {self.generation_tokens}",
            "# HELP vllm:request_success_total Count of successfully processed requests.",
            "# TYPE vllm:request_success_total counter",
            f'vllm:request_success_total{{{labels},finished_reason="length"}} {self.finished}',
        ]
        if self.speculative:
            for name, value in (
                ("num_drafts", self.drafts),
                ("num_draft_tokens", self.draft_tokens),
                ("num_accepted_tokens", self.accepted_tokens),
            ):
                lines += [
                    f"# HELP vllm:spec_decode_{name}_total Speculative decoding: {name.replace('_', ' ')}.",
                    f"# TYPE vllm:spec_decode_{name}_total counter",
                    f"vllm:spec_decode_{name}_total{{{labels}}} {value}",
                ]
        return "\n".join(lines) + "\n"


def _prompt_tokens(body: dict[str, Any]) -> int:
    chars = 0
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(str(part.get("text", ""))) for part in content if isinstance(part, dict))
    return max(1, chars // 4)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error"}}, status=status)


def make_app(engine: Engine, model: str = "fake") -> web.Application:
    async def chat(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error(400, "messages is required")
        if body.get("stream"):
            return _error(400, "this fake vLLM answers only non-streaming requests")
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or DEFAULT_MAX_TOKENS
        if not isinstance(max_tokens, int) or max_tokens < 1:
            return _error(400, "max_tokens must be a positive integer")
        prompt = _prompt_tokens(body)
        await engine.submit(prompt, max_tokens)
        return web.json_response(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model") or model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": " ".join(["tok"] * max_tokens)},
                        "logprobs": None,
                        "finish_reason": "length",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": max_tokens,
                    "total_tokens": prompt + max_tokens,
                },
            }
        )

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=engine.metrics(model), content_type="text/plain", charset="utf-8")

    async def models(request: web.Request) -> web.Response:
        card = {"id": model, "object": "model", "created": 0, "owned_by": "vllm", "max_model_len": 4096}
        return web.json_response({"object": "list", "data": [card]})

    async def health(request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def start(app: web.Application) -> None:
        app["engine_task"] = asyncio.create_task(engine.run(), name="fake-vllm-engine")

    async def stop(app: web.Application) -> None:
        task: asyncio.Task[None] = app["engine_task"]
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A fake vLLM server whose latency depends on its queue.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    kind = parser.add_mutually_exclusive_group(required=True)
    kind.add_argument("--speculative", dest="speculative", action="store_true", help="simulate speculative decoding")
    kind.add_argument("--plain", dest="speculative", action="store_false", help="simulate plain decoding")
    parser.add_argument("--max-batch", type=int, default=16, help="requests run at once (vLLM max_num_seqs)")
    parser.add_argument("--base-ms", type=float, default=BASE_MS, help="step time with an empty batch (ms)")
    parser.add_argument("--model", default="fake", help="model name in /metrics and /v1/models")
    parser.add_argument("--seed", type=int, default=None, help="seed for the draft-acceptance draws")
    args = parser.parse_args(argv)
    if args.max_batch < 1 or args.base_ms <= 0:
        parser.error("--max-batch must be at least 1 and --base-ms above 0")
    engine = Engine(args.speculative, args.max_batch, args.base_ms / 1000, random.Random(args.seed))
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    web.run_app(
        make_app(engine, args.model), host=args.host, port=args.port, print=None, access_log=None, shutdown_timeout=2
    )


if __name__ == "__main__":
    main()
