"""POST /v1/feedback through the real app: stored beside the request's log record, and sent as a span
`feedback` under the request's server span to a real OTLP receiver."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.requestlog.store_sqlite import SqliteStore
from tests.conftest import CLIENT_KEY
from tests.fakes.otlp import OtlpReceiver, ReceivedSpan
from tests.fakes.upstream import FakeUpstream
from tests.gateway_server import GatewayServer
from tests.observability.test_request_log import client, policy, rows

OTHER_KEY = "sk-other-team-key-55555"
AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}
Gateway = Callable[[str], GatewayServer]


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as found:
        yield found


def traced(upstream: FakeUpstream, receiver: OtlpReceiver, db: Path, capture: bool = False) -> str:
    telemetry = {"otlp_endpoint": receiver.http_url, "capture_content": capture, "metrics_interval_s": 60}
    return policy(upstream.url, {"path": str(db)}, telemetry=telemetry, keys=[{"name": "team-b", "key": OTHER_KEY}])


def ask(gw: GatewayServer) -> str:
    request_id = f"fb-{uuid.uuid4().hex[:12]}"
    client(gw).chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "rate me"}], extra_headers={"x-request-id": request_id}
    )
    return request_id


def feedback(gw: GatewayServer, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(gw.base_url + "/feedback", json=body, headers=AUTH if headers is None else headers)


def feedback_span(receiver: OtlpReceiver, trace_id: str) -> ReceivedSpan:
    def found() -> ReceivedSpan | None:
        return next((s for s in receiver.spans if s.name == "feedback" and s.trace_id == trace_id), None)

    assert receiver.wait_for(lambda: found() is not None), "no feedback span arrived"
    span = found()
    assert span is not None
    return span


def test_feedback_is_stored_and_traced(
    upstream: FakeUpstream, receiver: OtlpReceiver, make_gateway: Gateway, tmp_path: Path
) -> None:
    db = tmp_path / "requests.db"
    gw = make_gateway(traced(upstream, receiver, db))
    request_id = ask(gw)
    response = feedback(gw, {"request_id": request_id, "score": 0.5, "comment": "a bit long"})  # at once: flushed

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "feedback" and body["request_id"] == request_id and body["score"] == 0.5
    assert body["id"].startswith("fb-") and response.headers["x-request-id"]
    record = rows(db, 1)[0]
    store = SqliteStore(db, create=False)
    stored = store.feedback(request_id)
    store.close()
    assert [(f["score"], f["comment"], f["caller"]) for f in stored] == [(0.5, "a bit long", "team-a")]

    assert record["trace_id"] and record["span_id"]
    server = [s for s in receiver.trace_of(request_id) if s.span_id == record["span_id"]]
    assert len(server) == 1 and server[0].kind == "SERVER"  # the log points at the request's real span
    span = feedback_span(receiver, record["trace_id"])
    assert span.parent_span_id == record["span_id"]
    assert [name for name, _ in span.events] == ["gen_ai.feedback"]
    attributes = span.events[0][1]
    assert attributes["gen_ai.feedback.score"] == 0.5
    assert "gen_ai.feedback.comment" not in attributes  # content capture is off


def test_comment_on_the_span_only_with_content_capture(
    upstream: FakeUpstream, receiver: OtlpReceiver, make_gateway: Gateway, tmp_path: Path
) -> None:
    db = tmp_path / "requests.db"
    gw = make_gateway(traced(upstream, receiver, db, capture=True))
    request_id = ask(gw)
    assert feedback(gw, {"request_id": request_id, "score": -1, "comment": "wrong answer"}).status_code == 200
    span = feedback_span(receiver, rows(db, 1)[0]["trace_id"])
    assert span.events[0][1] == {
        "gen_ai.feedback.score": -1.0,
        "gen_ai.feedback.comment": "wrong answer",
        "gateway.request_id": request_id,
    }


def test_unknown_ids_and_bad_input(
    upstream: FakeUpstream, receiver: OtlpReceiver, make_gateway: Gateway, tmp_path: Path
) -> None:
    gw = make_gateway(traced(upstream, receiver, tmp_path / "requests.db"))
    request_id = ask(gw)

    def error(response: httpx.Response, status: int, code: str | None, param: str | None) -> None:
        assert response.status_code == status, response.text
        problem = response.json()["error"]
        assert set(problem) == {"message", "type", "param", "code"}
        assert (problem["code"], problem["param"]) == (code, param), problem

    error(feedback(gw, {"request_id": "never-sent", "score": 1}), 404, "request_not_found", "request_id")
    other = {"authorization": f"Bearer {OTHER_KEY}"}  # another caller's request is not theirs to rate
    error(feedback(gw, {"request_id": request_id, "score": 1}, other), 404, "request_not_found", "request_id")
    error(feedback(gw, {"request_id": request_id, "score": 1}, {}), 401, "missing_api_key", None)
    error(feedback(gw, {"request_id": request_id}), 400, None, "score")
    error(feedback(gw, {"request_id": request_id, "score": True}), 400, None, "score")
    error(feedback(gw, {"request_id": request_id, "score": "5"}), 400, None, "score")
    error(feedback(gw, {"request_id": "", "score": 1}), 400, None, "request_id")
    error(feedback(gw, {"request_id": request_id, "score": 1, "comment": 7}), 400, None, "comment")
    error(feedback(gw, {"request_id": request_id, "score": 1, "comment": "x" * 4001}), 400, None, "comment")
    error(feedback(gw, {"request_id": request_id, "score": 1, "rating": 2}), 400, None, "rating")
    error(feedback(gw, {"request_id": "a b/c", "score": 1}), 400, None, "request_id")
    error(feedback(gw, {"request_id": request_id, "score": 10**400}), 400, None, "score")
    error(feedback(gw, {"request_id": request_id, "score": 1, "comment": "a\x00b"}), 400, None, "comment")
    surrogate = b'{"request_id": "%s", "score": 1, "comment": "a\\ud800b"}' % request_id.encode()
    error(httpx.post(gw.base_url + "/feedback", content=surrogate, headers=AUTH), 400, None, None)  # not JSON
    error(feedback(gw, [request_id, 1]), 400, None, None)
    raw = httpx.post(gw.base_url + "/feedback", content=b"{not json", headers=AUTH)
    error(raw, 400, None, None)
    error(httpx.get(gw.base_url + "/feedback", headers=AUTH), 405, "method_not_allowed", None)
    assert feedback(gw, {"request_id": request_id, "score": 3}).status_code == 200


def test_feedback_without_a_request_log(gateway: GatewayServer) -> None:
    response = feedback(gateway, {"request_id": "anything", "score": 1})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "request_log_disabled"


def test_feedback_is_in_the_openapi_document(gateway: GatewayServer) -> None:
    document = httpx.get(gateway.url + "/openapi.json").json()
    operation = document["paths"]["/v1/feedback"]["post"]
    assert {"200", "400", "401", "404"} <= set(operation["responses"])
    schema = document["components"]["schemas"]["FeedbackRequest"]
    assert schema["required"] == ["request_id", "score"]
