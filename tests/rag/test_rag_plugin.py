"""The rag plugin through the real app: OpenAI SDK -> gateway -> fake upstream (echo shows what was injected)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from gateway.loader import PolicyError, load_text
from gateway.rag.ingest import ingest
from gateway.rag.store import IndexStore, IndexStoreError
from plugins.rag import Rag, RagConfig
from tests.fakes.upstream import FakeUpstream
from tests.gateway_server import GatewayServer
from tests.rag.conftest import CORPUS

HR_KEY = "sk-rag-hr-0123456789"
IT_KEY = "sk-rag-it-0123456789"
LEAVE = "How many vacation days do full-time staff get each year?"


def policy(url: str, index: Path, rag: str = "", extra_models: str = "") -> str:
    return f"""
backends:
  - {{name: fake, type: openai, base_url: "{url}/v1"}}
models:
  - name: kb
    targets: [{{backend: fake, model: echo-model}}]
    plugins:
      - {{use: rag, index: "{index}", top_k: 3, reload_interval_s: 0.1 {rag}}}
      - {{use: exact_cache}}
  - name: kb-user
    targets: [{{backend: fake, model: echo-model}}]
    plugins: [{{use: rag, index: "{index}", inject_as: user_prefix, top_k: 2}}]
  - name: plain
    targets: [{{backend: fake, model: echo-model}}]
{extra_models}
"""


def sent_to_upstream(upstream: FakeUpstream, request_id: str) -> dict[str, Any]:
    body: dict[str, Any] = next(r for r in upstream.requests if r.headers.get("x-request-id") == request_id).body
    return body


def ask(client: OpenAI, model: str, question: str, **kwargs: Any) -> tuple[Any, str]:
    request_id = f"rag-{uuid.uuid4().hex[:12]}"
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        extra_headers={"x-request-id": request_id},
        **kwargs,
    )
    return raw, request_id


def test_passages_are_injected_numbered_as_a_system_message_and_sources_are_named(
    make_gateway: Callable[[str], GatewayServer], upstream: FakeUpstream, corpus_index: Path
) -> None:
    gateway = make_gateway(policy(upstream.url, corpus_index))
    client = OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
    raw, request_id = ask(client, "kb", LEAVE)
    assert raw.parse().choices[0].message.content == f"echo: {LEAVE}"
    sent = sent_to_upstream(upstream, request_id)["messages"]
    assert [m["role"] for m in sent] == ["system", "user"] and sent[1]["content"] == LEAVE
    context = sent[0]["content"]
    assert context.startswith("Answer with the help of the numbered passages below")
    assert "[1] Annual leave - Entitlement (rag_corpus/hr/annual-leave.md)\n" in context
    assert "27 days of paid annual leave" in context and "[3] " in context and "[4] " not in context
    sources = raw.headers["x-gateway-rag-sources"].split(", ")
    assert sources[0] == "rag_corpus/hr/annual-leave.md" and len(sources) == len(set(sources)) <= 3

    raw, request_id = ask(client, "plain", LEAVE)
    assert sent_to_upstream(upstream, request_id)["messages"] == [{"role": "user", "content": LEAVE}]
    assert "x-gateway-rag-sources" not in raw.headers


def test_user_prefix_wraps_the_question_and_works_for_streams(
    make_gateway: Callable[[str], GatewayServer], upstream: FakeUpstream, corpus_index: Path
) -> None:
    gateway = make_gateway(policy(upstream.url, corpus_index))
    client = OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
    question = "What is the per diem for meals on a business trip abroad?"
    with client.chat.completions.with_streaming_response.create(
        model="kb-user", messages=[{"role": "user", "content": question}], stream=True
    ) as response:
        assert response.headers["x-gateway-rag-sources"].startswith("rag_corpus/finance/travel-policy.pdf")
        text = "".join(chunk.choices[0].delta.content or "" for chunk in response.parse() if chunk.choices)
    assert text.startswith(
        "echo: Passages:\n[1] Business travel policy - page 2 (rag_corpus/finance/travel-policy.pdf)"
    )
    assert "meal allowance of 45 euros" in " ".join(text.split())
    assert "[2] " in text and "[3] " not in text and text.endswith(f"Question: {question}")


def test_the_cache_key_carries_the_index_version(
    make_gateway: Callable[[str], GatewayServer], upstream: FakeUpstream, index_copy: Path, tmp_path: Path
) -> None:
    gateway = make_gateway(policy(upstream.url, index_copy))
    client = OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
    question = f"{LEAVE} ({uuid.uuid4().hex[:6]})"
    first, _ = ask(client, "kb", question)
    again, _ = ask(client, "kb", question)
    assert (first.headers["x-gateway-cache"], again.headers["x-gateway-cache"]) == ("miss", "hit")

    changed = tmp_path / "rag_corpus" / "hr"
    changed.mkdir(parents=True)
    (changed / "annual-leave.md").write_text(
        "# Annual leave\n\n## Entitlement\nEvery full-time employee now receives 30 days of paid annual leave.\n"
    )
    report = ingest(IndexStore(index_copy), [tmp_path / "rag_corpus"], progress=False)
    assert report.version == "v0002" and report.changed == ["rag_corpus/hr/annual-leave.md"]
    # rag_corpus/ was given again: the rest of the corpus, not in this folder, is removed
    assert len(report.removed) > 30

    deadline = time.monotonic() + 10
    while True:  # the plugin checks CURRENT every 0.1 s
        after, request_id = ask(client, "kb", question)
        if after.headers["x-gateway-cache"] == "miss" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert after.headers["x-gateway-cache"] == "miss"
    assert "30 days of paid annual leave" in sent_to_upstream(upstream, request_id)["messages"][0]["content"]

    IndexStore(index_copy).set_current("v0001")  # what `gateway rag rollback` does
    deadline = time.monotonic() + 10
    while True:
        rolled, _ = ask(client, "kb", question)
        if rolled.headers["x-gateway-cache"] == "hit" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert rolled.headers["x-gateway-cache"] == "hit"  # the answer built from v0001 is valid again


@pytest.fixture(scope="module")
def collections_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rag-collections") / "kb"
    store = IndexStore(root)
    assert not ingest(store, [CORPUS / "hr"], collection="hr", progress=False).failed
    assert not ingest(store, [CORPUS / "it", CORPUS / "finance"], collection="it", progress=False).failed
    return root


def test_each_key_sees_only_its_collections_and_filters_apply(
    make_gateway: Callable[[str], GatewayServer], upstream: FakeUpstream, collections_index: Path
) -> None:
    models = f"""  - name: kb-access
    targets: [{{backend: fake, model: echo-model}}]
    plugins:
      - use: rag
        index: "{collections_index}"
        top_k: 3
        access: {{hr-team: [hr], it-team: [it, hr]}}
        default_access: []
  - name: kb-pdf
    targets: [{{backend: fake, model: echo-model}}]
    plugins: [{{use: rag, index: "{collections_index}", filters: {{kind: pdf}}}}]
auth:
  keys:
    - {{name: hr-team, key: "{HR_KEY}"}}
    - {{name: it-team, key: "{IT_KEY}"}}
    - {{name: guest, key: "sk-rag-guest-0123456789"}}
"""
    gateway = make_gateway(policy(upstream.url, collections_index, extra_models=models))
    question = "How do I connect to the internal network from home?"

    def sources(key: str, model: str = "kb-access") -> list[str]:
        raw, _ = ask(OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0), model, question)
        value = raw.headers.get("x-gateway-rag-sources")
        return value.split(", ") if value else []

    it_sources = sources(IT_KEY)
    assert it_sources[0] == "it/vpn.txt"
    hr_sources = sources(HR_KEY)
    assert hr_sources and all(s.startswith("hr/") for s in hr_sources)
    assert sources("sk-rag-guest-0123456789") == []  # default_access: [] (no collection)
    assert {s.rsplit(".", 1)[1] for s in sources(HR_KEY, "kb-pdf")} == {"pdf"}


def test_the_retrieval_span_carries_chunk_ids_and_scores(
    upstream: FakeUpstream, corpus_index: Path, tmp_path: Path
) -> None:
    from tests.fakes.otlp import OtlpReceiver

    with OtlpReceiver() as receiver:
        text = policy(upstream.url, corpus_index) + f'telemetry: {{otlp_endpoint: "{receiver.http_url}"}}\n'
        path = tmp_path / "traced.yaml"
        path.write_text(text)
        with GatewayServer(path) as gateway:
            client = OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
            raw, request_id = ask(client, "kb", LEAVE)
            spans = receiver.trace_of(request_id)
            assert receiver.wait_for(lambda: any(s.name == "retrieval" for s in receiver.spans))
            spans = [s for s in receiver.spans if s.trace_id == spans[0].trace_id]
    retrieval = next(s for s in spans if s.name == "retrieval")
    assert retrieval.attributes["rag.version"] == "v0001"
    ids = retrieval.attributes["rag.chunk_ids"]
    scores = retrieval.attributes["rag.scores"]
    searcher = IndexStore(corpus_index).load()
    by_id = {c.id: c for c in searcher.chunks}
    assert len(ids) == len(scores) == 3 and by_id[ids[0]].source == "rag_corpus/hr/annual-leave.md"
    assert scores == sorted(scores, reverse=True) and all(0 < s <= 2 / 61 for s in scores)  # RRF, k = 60
    assert retrieval.attributes["rag.injected"] == 3
    server = next(s for s in spans if s.attributes.get("gateway.request_id") == request_id)
    assert retrieval.trace_id == server.trace_id and raw.headers["x-gateway-rag-sources"]


def test_redis_store_lets_replicas_serve_the_published_version(
    make_gateway: Callable[[str], GatewayServer], upstream: FakeUpstream, index_copy: Path, redis_server: Any
) -> None:
    from gateway.cli import main

    redis_server.flush()
    name = f"kb-{uuid.uuid4().hex[:6]}"
    publish = ["rag", "publish", "--index", str(index_copy), "--redis-url", redis_server.url, "--redis-index", name]
    assert main(publish) == 0
    rag = f'{{use: rag, store: redis, redis_url: "{redis_server.url}", redis_index: {name}, reload_interval_s: 0.1}}'
    text = f"""
backends: [{{name: fake, type: openai, base_url: "{upstream.url}/v1"}}]
models: [{{name: kb, targets: [{{backend: fake, model: echo-model}}], plugins: [{rag}]}}]
"""
    replicas = [make_gateway(text), make_gateway(text)]
    answers = [ask(OpenAI(base_url=g.base_url, api_key="x", max_retries=0), "kb", LEAVE) for g in replicas]
    assert {raw.headers["x-gateway-rag-sources"].split(", ")[0] for raw, _ in answers} == {
        "rag_corpus/hr/annual-leave.md"
    }
    ready = httpx.get(replicas[0].url + "/ready").json()
    assert "version v0001" in str(ready)

    docs = index_copy.parent / "more"
    docs.mkdir()
    (docs / "canteen.md").write_text("# Canteen\n\n## Closing\nThe rooftop canteen closes at 15:00 on Fridays.\n")
    ingest(IndexStore(index_copy), [docs], progress=False)
    assert main(publish) == 0
    deadline = time.monotonic() + 10
    for gateway in replicas:
        client = OpenAI(base_url=gateway.base_url, api_key="x", max_retries=0)
        while True:
            raw, _ = ask(client, "kb", "When does the rooftop canteen close on Fridays?")
            if raw.headers["x-gateway-rag-sources"].startswith("more/canteen.md") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert raw.headers["x-gateway-rag-sources"].startswith("more/canteen.md")

    redis_server.kill()  # Redis gone: the loaded version keeps serving, /ready says degraded
    try:
        raw, _ = ask(OpenAI(base_url=replicas[0].base_url, api_key="x", max_retries=0), "kb", LEAVE)
        assert raw.headers["x-gateway-rag-sources"].startswith("rag_corpus/hr/annual-leave.md")
        deadline = time.monotonic() + 10
        while httpx.get(replicas[0].url + "/ready").json()["status"] != "degraded" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert httpx.get(replicas[0].url + "/ready").json()["status"] == "degraded"
    finally:
        redis_server.restart()


def test_bad_options_fail_at_load_with_the_reason(corpus_index: Path, tmp_path: Path) -> None:
    cases = {
        "rerank: {model_path: /nowhere/cross-encoder}": "rerank model folder '/nowhere/cross-encoder' does not exist",
        "template: 'Use {contxt}'": "unknown placeholder(s) ['contxt']",
        "top_k: 0": "top_k",
        "inject_as: assistant": "inject_as",
    }
    for option, message in cases.items():
        text = f"""
backends: [{{name: b, type: openai, base_url: "http://127.0.0.1:9/v1"}}]
models: [{{name: m, targets: [{{backend: b, model: x}}], plugins: [{{use: rag, index: "{corpus_index}", {option}}}]}}]
"""
        with pytest.raises(PolicyError) as failure:
            load_text(text)
        assert message in str(failure.value), option
    with pytest.raises(PolicyError, match="store: file needs `index`"):
        load_text(
            'backends: [{name: b, type: openai, base_url: "http://x/v1"}]\n'
            "models: [{name: m, targets: [{backend: b, model: x}], plugins: [{use: rag}]}]\n"
        )


async def test_an_index_folder_without_a_version_stops_the_start(tmp_path: Path) -> None:
    plugin = Rag(RagConfig(index=str(tmp_path / "empty")))
    with pytest.raises(IndexStoreError, match="has no version yet; run `gateway rag ingest` first"):
        await plugin.start()
    await plugin.close()
