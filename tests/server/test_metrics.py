"""Metrics end to end: a real server scraped by a real Prometheus, asked over its HTTP API.

One scenario per module: start a server and a Prometheus that scrapes it every
half second (with the rules of deploy/prometheus/alerts.yml loaded), send a
known mix of good and bad requests, wait for a scrape that started after the
last answer, then check exact counts and the rules through Prometheus' API.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import yaml

from digitserve.v1 import digitserve_pb2 as pb
from digitserve.v1 import digitserve_pb2_grpc as pb_grpc

from ..conftest import MODEL, REPO_ROOT, ServerThread, server_settings

RULES = REPO_ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "digitserve.json"
INSTALL_HINT = (
    "`make test` installs it (scripts/ensure_prometheus.sh: Debian's 'prometheus' package, "
    "which also brings promtool)"
)


def require_binary(name: str) -> str:
    """The path of ``name``; fails the test (never skips) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH: {INSTALL_HINT}", pytrace=False)
    return path


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    """A real Prometheus on 127.0.0.1 with its storage under ``workdir``; a context manager.

    Prometheus cannot listen on port 0 and report the port, so a free port is
    picked and the start is retried on another one if Prometheus fails to bind.
    """

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        self._binary = require_binary("prometheus")
        self.workdir = workdir
        self.config_file = workdir / "prometheus.yml"
        self.config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_file = workdir / "prometheus.log"
        self.url = ""
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Prometheus:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(self, timeout: float = 30.0) -> None:
        for _attempt in range(3):
            port = _unused_port()
            self.url = f"http://127.0.0.1:{port}"
            with self.log_file.open("ab") as log:
                self._proc = subprocess.Popen(
                    [
                        self._binary,
                        f"--config.file={self.config_file}",
                        f"--storage.tsdb.path={self.workdir / 'data'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                        "--web.enable-lifecycle",
                        "--log.level=warn",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    break  # exited: most likely the port was taken meanwhile
                with (
                    contextlib.suppress(OSError),  # refused, or 503 while starting
                    urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as reply,
                ):
                    if reply.status == 200:
                        return
                time.sleep(0.1)
            else:
                raise TimeoutError(f"Prometheus not ready after {timeout}s:\n{self.log()}")
        raise RuntimeError(f"Prometheus did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")[-4000:] if self.log_file.exists() else ""

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; returns ``data`` of a successful answer."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                body = json.load(reply)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        assert body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query at now: the list of {metric, value}."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", f"{expr}: {data}"
        return list(data["result"])

    def value(self, expr: str) -> float:
        """The single value of an instant query."""
        result = self.query(expr)
        assert len(result) == 1, f"{expr}: expected one series, got {result}"
        return float(result[0]["value"][1])

    def wait_for(self, expr: str, check: Any, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Poll ``expr`` until ``check(result)`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if check(result):
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting on {expr}; last result {result}")
            time.sleep(0.1)


def by_labels(result: list[dict[str, Any]], *names: str) -> dict[tuple[str, ...], float]:
    """{(label values...): value}; a label Prometheus dropped as empty reads as ""."""
    return {
        tuple(item["metric"].get(name, "") for name in names): float(item["value"][1])
        for item in result
    }


# ---- the scenario ------------------------------------------------------------------------


@dataclass
class Scenario:
    server: ServerThread
    prometheus: Prometheus
    digits: Counter[int]  # predicted digit -> count, from the answers
    low_confidence: int  # answers under the server's low_confidence_threshold
    images: int


GOOD_CLASSIFY = 37
GOOD_ITEMS = 18
LOW_CONFIDENCE = 0.6  # the server's default low_confidence_threshold


def pixels(image: np.ndarray) -> pb.Image:
    return pb.Image(pixels=image.astype(np.uint8).tobytes())


def bad_requests() -> list[tuple[pb.ClassifyRequest, grpc.StatusCode]]:
    blank = pb.Image(pixels=b"\x00" * 784)
    return [
        (pb.ClassifyRequest(), grpc.StatusCode.INVALID_ARGUMENT),
        (
            pb.ClassifyRequest(images=[pb.Image(pixels=b"\x00" * 783)]),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            pb.ClassifyRequest(images=[pb.Image(encoded=b"not an image")]),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (pb.ClassifyRequest(images=[pb.Image()]), grpc.StatusCode.INVALID_ARGUMENT),
        # refused before the model is known: no model label
        (
            pb.ClassifyRequest(images=[blank], model=pb.ModelSelector(version=-3)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        # a model name the server does not know must not become a label value
        (
            pb.ClassifyRequest(images=[blank], model=pb.ModelSelector(name="nope")),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            pb.ClassifyRequest(images=[blank], model=pb.ModelSelector(version=42)),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            pb.ClassifyRequest(images=[blank], model=pb.ModelSelector(label="canary")),
            grpc.StatusCode.NOT_FOUND,
        ),
    ]


def prometheus_config(metrics_port: int) -> dict[str, Any]:
    return {
        "global": {
            "scrape_interval": "500ms",
            "scrape_timeout": "400ms",
            "evaluation_interval": "500ms",
        },
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": "digitserve",
                "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
            }
        ],
    }


def wait_for_scrape(prom: Prometheus) -> None:
    """Wait for a scrape that started after now: it sees every count made until now."""
    now = time.time()
    prom.wait_for(
        'timestamp(up{job="digitserve"})',
        lambda r: len(r) == 1 and float(r[0]["value"][1]) > now,
    )


@pytest.fixture(scope="module")
def scenario(
    trained_repo: Path,
    mnist_test: tuple[np.ndarray, np.ndarray],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Scenario]:
    images = mnist_test[0]
    server = ServerThread(server_settings(trained_repo)).start()
    try:
        assert server.server is not None and server.server.metrics.port
        workdir = tmp_path_factory.mktemp("prometheus")
        with Prometheus(prometheus_config(server.server.metrics.port), workdir) as prom:
            digits: Counter[int] = Counter()
            low = 0
            with grpc.insecure_channel(server.target) as channel:
                stub = pb_grpc.DigitClassifierStub(channel)
                for i in range(GOOD_CLASSIFY):
                    if i == 1:
                        # Let one scrape see the OK series before the rest: rate() cannot
                        # see increments made before a series' first sample.
                        wait_for_scrape(prom)
                    reply = stub.Classify(
                        pb.ClassifyRequest(images=[pixels(images[i])]), timeout=10
                    )
                    for p in reply.predictions:
                        digits[p.digit] += 1
                        low += p.confidence < LOW_CONFIDENCE
                for request, code in bad_requests():
                    with pytest.raises(grpc.RpcError) as info:
                        stub.Classify(request, timeout=10)
                    assert info.value.code() == code
                items = [
                    pb.ClassifyStreamRequest(id=str(i), image=pixels(images[100 + i]))
                    for i in range(GOOD_ITEMS)
                ]
                items.insert(
                    5, pb.ClassifyStreamRequest(id="bad-1", image=pb.Image(pixels=b"\x01"))
                )
                items.insert(12, pb.ClassifyStreamRequest(id="bad-2", image=pb.Image()))
                answers = list(stub.ClassifyStream(iter(items), timeout=30))
                assert len(answers) == GOOD_ITEMS + 2
                for answer in answers:
                    if answer.WhichOneof("result") == "prediction":
                        digits[answer.prediction.digit] += 1
                        low += answer.prediction.confidence < LOW_CONFIDENCE
            assert sum(digits.values()) == GOOD_CLASSIFY + GOOD_ITEMS
            wait_for_scrape(prom)
            yield Scenario(server, prom, digits, low, GOOD_CLASSIFY + GOOD_ITEMS)
    finally:
        server.stop()


# ---- the checks ----------------------------------------------------------------------------


def test_target_is_up(scenario: Scenario) -> None:
    assert scenario.prometheus.value('up{job="digitserve"}') == 1


def test_requests_by_rpc_code_model_and_version(scenario: Scenario) -> None:
    prom = scenario.prometheus
    got = by_labels(prom.query("digitserve_requests_total"), "rpc", "code", "model", "version")
    # Error series exist at 0 from the start, so a first failure shows in rate().
    assert got[("Classify", "INTERNAL", MODEL, "")] == 0
    assert got[("ClassifyStream", "RESOURCE_EXHAUSTED", MODEL, "")] == 0
    got = {labels: count for labels, count in got.items() if count}
    assert got == {
        ("Classify", "OK", MODEL, "1"): GOOD_CLASSIFY,
        ("Classify", "INVALID_ARGUMENT", MODEL, ""): 4,
        ("Classify", "INVALID_ARGUMENT", "", ""): 1,
        ("Classify", "NOT_FOUND", MODEL, ""): 2,
        ("Classify", "NOT_FOUND", "", ""): 1,
        ("ClassifyStream", "OK", MODEL, "1"): 1,
    }
    items = by_labels(prom.query("digitserve_stream_items_total"), "code", "model", "version")
    assert items == {("OK", MODEL, "1"): GOOD_ITEMS, ("INVALID_ARGUMENT", MODEL, ""): 2}
    # No series at all carries the made-up model name.
    assert prom.query('{__name__=~"digitserve_.+", model="nope"}') == []


def test_images_predictions_and_rejections(scenario: Scenario) -> None:
    prom = scenario.prometheus
    assert by_labels(prom.query("digitserve_images_classified_total"), "model", "version") == {
        (MODEL, "1"): scenario.images
    }
    digits = by_labels(prom.query("digitserve_predictions_total > 0"), "digit")
    assert digits == {(str(d),): n for d, n in scenario.digits.items()}
    assert prom.value("sum(digitserve_low_confidence_predictions_total)") == (
        scenario.low_confidence
    )
    assert prom.value("sum(digitserve_prediction_confidence_count)") == scenario.images
    # Requests refused as invalid (5) and invalid stream items (2).
    rejected = by_labels(prom.query("digitserve_rejections_total > 0"), "model", "reason")
    assert rejected == {(MODEL, "invalid_input"): 6, ("", "invalid_input"): 1}
    # Every good image went through the batcher once; warm-up calls are not counted.
    assert prom.value("sum(digitserve_batch_size_images_sum)") == scenario.images
    assert prom.value("sum(digitserve_batch_queue_wait_seconds_count)") == scenario.images
    assert prom.value("sum(digitserve_batch_failures_total)") == 0
    assert prom.value("sum(digitserve_queue_depth_images)") == 0
    assert prom.value("sum(digitserve_inflight_requests)") == 0


def test_latency_histogram_and_quantile(scenario: Scenario) -> None:
    prom = scenario.prometheus
    counts = by_labels(prom.query("digitserve_request_duration_seconds_count"), "rpc", "model")
    assert counts == {
        ("Classify", MODEL): GOOD_CLASSIFY + 4 + 2,
        ("Classify", ""): 2,
        ("ClassifyStream", MODEL): 1,
    }
    p99 = prom.value(
        "histogram_quantile(0.99, sum by (le) "
        '(digitserve_request_duration_seconds_bucket{rpc="Classify"}))'
    )
    assert math.isfinite(p99) and 0 < p99 <= 10.0  # within the finite buckets
    # Buckets are cumulative and end with +Inf = count.
    buckets = by_labels(
        prom.query(f'digitserve_request_duration_seconds_bucket{{rpc="Classify",model="{MODEL}"}}'),
        "le",
    )
    ordered = [v for _, v in sorted(buckets.items(), key=lambda kv: float(kv[0][0]))]
    assert ordered == sorted(ordered) and ordered[-1] == GOOD_CLASSIFY + 6


def test_versions_loads_and_build(scenario: Scenario) -> None:
    prom = scenario.prometheus
    assert (
        prom.value(
            f'digitserve_model_version_info{{model="{MODEL}",state="AVAILABLE",version="1"}}'
        )
        == 1
    )
    assert prom.query('digitserve_model_version_info{state!="AVAILABLE"}') == []
    assert prom.value(f'digitserve_model_available_versions{{model="{MODEL}"}}') == 1
    assert prom.value(f'digitserve_model_load_duration_seconds_count{{model="{MODEL}"}}') == 1
    assert prom.query("digitserve_model_load_failures_total > 0") == []
    # the failure series exist at 0, so a first failure shows in increase()
    assert len(prom.query(f'digitserve_model_load_failures_total{{model="{MODEL}"}}')) == 4
    loaded_at = prom.value(
        f'digitserve_model_last_load_success_timestamp_seconds{{model="{MODEL}"}}'
    )
    assert time.time() - 600 < loaded_at <= time.time()
    (build,) = prom.query("digitserve_build_info")
    assert float(build["value"][1]) == 1
    labels = build["metric"]
    assert labels["version"] == importlib.metadata.version("digitserve")
    assert labels["grpc_version"] == grpc.__version__
    assert labels["git_commit"] and labels["tensorflow_version"] and labels["python_version"]
    assert prom.value("process_resident_memory_bytes") > 0


def test_exposition_passes_promtool_lint(scenario: Scenario) -> None:
    promtool = require_binary("promtool")
    with urllib.request.urlopen(scenario.server.metrics_url, timeout=10) as reply:
        text = reply.read()
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, timeout=60
    )
    problems = (checked.stdout + checked.stderr).decode()
    assert checked.returncode == 0, f"promtool check metrics:\n{problems}"


def test_rules_evaluate_on_real_series(scenario: Scenario) -> None:
    prom = scenario.prometheus
    # Client errors only: the server's error ratio is 0 (a value, not an absent series).
    ratio = prom.wait_for(
        f'job_model:digitserve_answer_errors:ratio_rate5m{{model="{MODEL}"}}', lambda r: r
    )
    assert by_labels(ratio, "job", "model") == {("digitserve", MODEL): 0.0}
    answers = prom.wait_for(
        'job_rpc_model_code:digitserve_answers:rate5m{rpc="ClassifyStream/item"}',
        lambda r: len(r) == 2,
    )
    assert set(by_labels(answers, "code")) == {("OK",), ("INVALID_ARGUMENT",)}
    groups = {g["name"]: g for g in prom.api("rules")["groups"]}
    assert set(groups) == {"digitserve.rules", "digitserve.baselines", "digitserve.alerts"}
    for group in groups.values():
        for rule in group["rules"]:
            # The baselines group runs every 5 minutes: it may not have run yet.
            assert rule["health"] in ({"ok", "unknown"} if group["interval"] >= 300 else {"ok"}), (
                rule
            )
    assert prom.query("ALERTS") == [], "no alert may even be pending on healthy traffic"


def dashboard_expressions() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in board["annotations"]["list"] if "expr" in a]
    return exprs


def test_dashboard_queries_run_on_real_series(scenario: Scenario) -> None:
    """Every dashboard query is accepted by Prometheus, and most find data."""
    prom = scenario.prometheus
    variables = {"$__rate_interval": "1m", "$job": ".*", "$instance": ".*", "$model": ".*"}
    empty = []
    for expr in dashboard_expressions():
        for name, value in variables.items():
            expr = expr.replace(name, value)
        if not prom.query(expr):
            empty.append(expr)
    # Only queries about events the scenario did not cause may stay empty: load
    # failures, and the version-loaded annotation (no load since the first scrape).
    quiet = ("digitserve_model_load_failures_total", "changes(digitserve_model_last_load")
    for expr in empty:
        assert any(name in expr for name in quiet), f"query finds nothing: {expr}"
