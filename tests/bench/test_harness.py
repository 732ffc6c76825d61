"""Pieces of the benchmark harness that can be wrong without any benchmark noticing."""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import report, soak, streaming
from bench.procs import _children, free_port, start_module, stop, wait_http


def test_soak_section_replaces_its_own_and_keeps_the_rest(tmp_path: Path) -> None:
    doc = tmp_path / "reliability.md"
    doc.write_text("# Reliability\n\n## Faults\n\nkept\n\n## Soak\n\nold figures\n\n## Later\n\nalso kept\n")
    soak.write_section(doc, "## Soak\n\nnew figures\n")
    assert doc.read_text() == "# Reliability\n\n## Faults\n\nkept\n\n## Soak\n\nnew figures\n## Later\n\nalso kept\n"
    fresh = tmp_path / "other.md"
    fresh.write_text("# Reliability\n\n## Faults\n")
    soak.write_section(fresh, "## Soak\n\nfigures\n")
    assert fresh.read_text() == "# Reliability\n\n## Faults\n\n## Soak\n\nfigures\n"


def test_growth_compares_the_end_with_the_end_of_warm_up() -> None:
    samples = [(float(t), 50.0 if t < 10 else 100.0 + (t - 10) * 0.5) for t in range(0, 40)]
    g = soak.growth(samples, warmup_s=10)
    assert g["start"] == 101.0 and g["end"] == 113.5 and g["peak"] == 114.5
    assert g["growth"] == pytest.approx(12.5 / 101.0)
    with pytest.raises(RuntimeError):
        soak.growth(samples, warmup_s=35)


@pytest.fixture(scope="module")
def stream_upstream() -> Iterator[str]:
    port = free_port()
    proc = start_module("bench.streaming", "--port", str(port))
    try:
        wait_http(f"http://127.0.0.1:{port}/")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def test_stream_targets_take_turns(stream_upstream: str) -> None:
    port = free_port()
    floor = start_module("bench.floor_proxy", "--upstream", stream_upstream, "--port", str(port))
    try:
        wait_http(f"http://127.0.0.1:{port}/")
        before = streaming.connections(stream_upstream)
        results = streaming.compare(
            {"direct": (stream_upstream, "bench"), "floor": (f"http://127.0.0.1:{port}", "bench")},
            rounds=2,
            per_round=3,
        )
    finally:
        stop(floor)
    assert set(results) == {"direct", "floor"}
    for result in results.values():
        assert 0 < result["ttft_p50"] <= result["ttft_p99"] < 1000
        assert 0 <= result["chunk_p50"] <= result["chunk_max"]
    # Two rounds each: direct opened a connection per round; the floor kept one for both of its rounds.
    assert streaming.connections(stream_upstream) == before + 3


def test_stream_delays_direct_and_through_the_floor(stream_upstream: str) -> None:
    before = streaming.connections(stream_upstream)  # the upstream is shared with other tests of this module
    direct = streaming.measure(stream_upstream, requests=5)
    port = free_port()
    floor = start_module("bench.floor_proxy", "--upstream", stream_upstream, "--port", str(port))
    try:
        wait_http(f"http://127.0.0.1:{port}/")
        relayed = streaming.measure(f"http://127.0.0.1:{port}", requests=5)
    finally:
        stop(floor)
    # Every chunk arrived (measure raises otherwise); the floor relays as it reads, so no chunk waits for the
    # next one (chunks are 2 ms apart: a buffering relay would show delays of whole intervals and more).
    for result in (direct, relayed):
        assert 0 < result["ttft_p50"] < 1000 and 0 <= result["chunk_p50"] < streaming.INTERVAL_S * 1000 * 5
    # Connections kept alive: one per measuring round directly (two rounds), one from the floor for both.
    assert streaming.connections(stream_upstream) == before + 3


def test_the_floor_as_two_processes_serves_on_one_port_and_stops_whole(stream_upstream: str) -> None:
    port = free_port()
    floor = start_module("bench.floor_proxy", "--upstream", stream_upstream, "--port", str(port), "--processes=2")
    try:
        wait_http(f"http://127.0.0.1:{port}/")
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions", data=b'{"model": "m", "stream": true}'
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200 and b"data: [DONE]" in answer.read()
        children = _children(floor.pid)
        assert len(children) == 2
    finally:
        stop(floor)
    assert floor.returncode == 0
    assert not [c for c in children if os.path.exists(f"/proc/{c}")]  # reaped: none left running


def _result(rps: float) -> Any:
    return {"c1": {"p50": 0.5, "p99": 1.0}, "c64": {"rps": rps, "p99": 10.0, "requests": rps}}


@pytest.mark.parametrize(
    ("one", "two", "floor_two", "met"),
    [
        (1000, 1900, 1500, True),  # near 2x: met whatever the floor did
        (1000, 1400, 1500, True),  # as far as the floor's two processes got on this machine (1.5x): 1.4 >= 0.9 * 1.5
        (1000, 1200, 1500, False),  # the floor scaled, the gateway did not
        (1000, 1500, None, False),  # no floor row: 2x-ish is the only bar
    ],
)
def test_multi_core_target_is_held_to_the_floor_s_own_scaling(
    one: float, two: float, floor_two: float | None, met: bool
) -> None:
    results = {
        "nginx": _result(50_000),
        "floor": _result(1000),
        "gateway": _result(one),
        "gateway, 2 workers": _result(two),
    }
    if floor_two is not None:
        results[report.FLOOR_2] = _result(floor_two)
    row = next(line for line in report.targets(results, {}).splitlines() if line.startswith("| 2 workers vs 1"))
    assert row.endswith("| yes |" if met else "| **no** |"), row
    assert f"{two / one:.2f}x" in row
