"""The benchmark suite's pieces: targets from figures, the markdown report, the echo server.

The whole suite (``make bench``) takes minutes and prints figures; these tests
check what it computes from figures and that its echo server and the
``digitserve-bench`` subprocess plumbing work.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from digitserve.client import AsyncDigitClient
from digitserve.server import benchsuite
from digitserve.v1 import digitserve_pb2_grpc as pb_grpc


def level(calls_per_s: float, *, images: int = 1, p50: float = 1.0) -> dict[str, Any]:
    return {
        "calls": 100,
        "calls_per_s": calls_per_s,
        "images_per_s": calls_per_s * images,
        "latency_ms": {"p50": p50, "p95": p50 * 2, "p99": p50 * 3, "max": p50 * 4},
        "errors": {},
        "client_cpu_cores": 0.5,
    }


RESULTS: dict[str, Any] = {
    "started_at": "2026-01-01 00:00:00 UTC",
    "model": {"name": "mnist", "version": 3, "architecture": "cnn", "path": "models/mnist/3"},
    "environment": {"cpus": 2, "python": "3.11", "load_before": "0.1", "load_after": "0.2"},
    "settings": {"warmup": 2.0, "duration": 6.0, "client_processes": 1},
    "data": "MNIST test images",
    "raw_model": [
        {"batch_size": 1, "images_per_s": 1000.0, "latency_ms": {"p50": 1.0, "p99": 2.0}},
        {"batch_size": 128, "images_per_s": 10000.0, "latency_ms": {"p50": 12.8, "p99": 15.0}},
    ],
    "servers": {
        "echo": {"unary-c1": level(2000, p50=0.5), "unary-c64": level(5000)},
        "batching": {
            "unary-c1": level(500, p50=1.7),
            "unary-c64": level(4200),
            "unary-k32-c8": level(300, images=32),
            "stream-c4": level(8000),
        },
        "no-batching": {
            "unary-c64": level(1000),
            "stream-c4": {"error": "digitserve-bench exited with 1: boom"},
        },
        "no-metrics": {"unary-c1": level(520, p50=1.65), "unary-c64": level(4300)},
    },
}


def by_name(checks: list[benchsuite.Check]) -> dict[str, benchsuite.Check]:
    return {check.name.split(":")[0]: check for check in checks}


def test_targets_are_computed_from_the_figures_of_one_run() -> None:
    checks = by_name(benchsuite.evaluate(RESULTS))
    idle = checks["idle latency"]
    assert idle.measured == 1.7 and idle.target == pytest.approx(1.0 + 0.5 + 0.3)
    assert idle.passed is True and not idle.higher_is_better
    load = checks["single-image load"]
    assert load.target == pytest.approx(min(0.8 * 5000, 0.9 * 10000)) and load.passed is True
    stream = checks["stream"]
    assert stream.measured == 8000 and stream.target == pytest.approx(9000)
    assert stream.passed is False and stream.ratio == pytest.approx(8000 / 9000)
    assert checks["multi-image calls"].measured == 9600 and checks["multi-image calls"].passed
    gain = checks["batching gain"]
    assert gain.target == pytest.approx(3000) and gain.passed is True
    cost = checks["metrics cost"]
    assert cost.target == pytest.approx(1.05 * 1.65) and cost.passed is True


def test_the_lower_bound_wins_for_single_image_load() -> None:
    results = copy.deepcopy(RESULTS)
    results["raw_model"][1]["images_per_s"] = 3000.0  # model slower than 0.8 x echo
    load = by_name(benchsuite.evaluate(results))["single-image load"]
    assert load.target == pytest.approx(0.9 * 3000) and load.passed is True


def test_missing_or_failed_figures_give_no_verdict() -> None:
    results = copy.deepcopy(RESULTS)
    del results["servers"]["echo"]
    results["servers"]["batching"]["stream-c4"] = {"error": "server exited"}
    results["servers"]["batching"]["unary-k32-c8"]["calls"] = 0
    checks = by_name(benchsuite.evaluate(results))
    for name in ("idle latency", "single-image load", "stream", "multi-image calls"):
        assert checks[name].passed is None and checks[name].ratio is None
    assert checks["batching gain"].passed is True


def test_the_markdown_report_has_every_table() -> None:
    checks = benchsuite.evaluate(RESULTS)
    text = benchsuite.render_markdown(RESULTS, checks)
    assert text.startswith("# digitserve benchmark, 2026-01-01")
    targets = [line for line in text.splitlines() if line.endswith("|") and "x raw" in line]
    assert len(targets) == 3  # single-image load, stream and multi-image targets
    verdicts = [line.split("|")[5].strip() for line in text.splitlines() if "| <= " in line]
    assert verdicts == ["PASS", "PASS"]  # the idle-latency and metrics-cost checks
    assert text.count("| PASS |") == 5 and text.count("| FAIL |") == 1
    server_rows = [line for line in text.splitlines() if line.startswith("| unary-c64:")]
    assert len(server_rows) == 4  # echo, batching, no-batching, no-metrics
    assert "| 4,200.0 | 4,200.0 |" in server_rows[1]
    assert "error: digitserve-bench exited with 1: boom" in text
    assert "| 128 | 10,000.0 | 12.800 | 15.000 |" in text


def test_batch_sizes_double_up_to_the_request_limit() -> None:
    assert benchsuite.batch_sizes() == [2**i for i in range(11)]
    assert benchsuite.batch_sizes(100) == [1, 2, 4, 8, 16, 32, 64]


def test_unknown_servers_or_scenarios_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown server 'nope'"):
        benchsuite.SuiteSettings(servers=("nope",))
    with pytest.raises(ValueError, match="unknown scenario"):
        benchsuite.SuiteSettings(scenarios=("unary-c1", "x"))


@pytest.fixture
async def echo_target() -> AsyncIterator[str]:
    server = grpc.aio.server()
    pb_grpc.add_DigitClassifierServicer_to_server(benchsuite.EchoClassifier(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


async def test_the_echo_server_answers_the_contract_with_a_constant(echo_target: str) -> None:
    blank = np.zeros((28, 28), dtype=np.uint8)
    async with AsyncDigitClient(echo_target) as client:
        predictions = await client.classify_batch([blank] * 3)
        assert [p.digit for p in predictions] == [0, 0, 0]
        streamed = [p async for p in client.classify_many([blank] * 5, window=2)]
        assert len(streamed) == 5 and all(p.confidence == 1.0 for p in streamed)


@pytest.mark.slow
def test_an_echo_server_process_is_loaded_by_a_bench_process(tmp_path: Path) -> None:
    config = next(s for s in benchsuite.SERVERS if s.kind == "echo")
    server = benchsuite.ServerProcess(config, tmp_path, "mnist", tmp_path / "echo.log")
    try:
        port = server.wait_ready(60)
        settings = benchsuite.SuiteSettings(warmup=0.1, duration=0.5)
        scenario = next(s for s in benchsuite.SCENARIOS if "stream" in s.name)
        result = benchsuite.run_bench(f"127.0.0.1:{port}", scenario, settings, None)
    finally:
        server.stop()
    assert result["mode"] == "stream" and result["calls"] > 0 and result["errors"] == {}
