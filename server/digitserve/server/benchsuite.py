"""The serving benchmark (``make bench``): digitserve beside its two limits, in one run.

    python -m digitserve.server.benchsuite [--data-dir D] [--out results]
        [--model-repo models] [--model-name mnist] [--warmup 2] [--duration 6]
        [--servers echo,batching,no-batching] [--scenarios unary-c1,...]

On one machine, one after the other:

1. **raw model**: the newest published version's SavedModel, called in this
   process through the server's own ``SavedModelRunner`` at every batch size
   1, 2, 4, ... 1024 (images/s and latency per call): the model's limit.
2. **echo**: a grpc.aio server of the same ``DigitClassifier`` contract, with
   digitserve's gRPC options, that answers every request with a constant
   prediction: the protocol's limit (gRPC, protobuf, Python, this machine).
3. **batching**: digitserve with its default settings.
4. **no-batching**: digitserve with ``--no-batching``.

Every server runs in its own process, and ``digitserve-bench`` loads it from
another one for each scenario of ``SCENARIOS``. The figures, the ratios of
``evaluate`` with their pass/fail verdicts, and the environment are printed
as markdown and saved as JSON and markdown under ``--out``.

Without a published version in ``--model-repo`` a quick one is trained first
(``digitserve-train --profile quick``). The version benchmarked is copied to a
private repository, so nothing published meanwhile changes what is served.

To extend: add a row to ``SCENARIOS`` (``digitserve-bench`` flags) or to
``SERVERS`` (``digitserve-server`` flags), and a ``Check`` in ``evaluate`` if
a ratio matters. Absolute figures depend on the machine and on what else runs
on it: compare figures of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import grpc
import numpy as np

from digitserve.v1 import digitserve_pb2 as pb
from digitserve.v1 import digitserve_pb2_grpc as pb_grpc

from . import logs
from .app import create_server, grpc_options
from .repository import ManifestError, list_versions, read_manifest, verify_version
from .settings import parse_settings

__all__ = [
    "SCENARIOS",
    "SERVERS",
    "Check",
    "Scenario",
    "ServerConfig",
    "SuiteSettings",
    "evaluate",
    "main",
    "render_markdown",
]

ENV_PREFIX = "DIGITSERVE_"
_TRAIN_SNIPPET = "import sys; from digitserve.trainer.cli import main; sys.exit(main())"
MAX_BATCH_SIZE = 1024
#: Idle latency may exceed raw model + echo by this much.
IDLE_ALLOWANCE_MS = 0.3


@dataclass(frozen=True)
class Scenario:
    """One load pattern, as ``digitserve-bench`` flags."""

    name: str
    title: str
    bench_args: tuple[str, ...]


@dataclass(frozen=True)
class ServerConfig:
    """One server under test."""

    name: str
    title: str
    kind: Literal["echo", "digitserve"]
    server_args: tuple[str, ...] = ()
    """``digitserve-server`` flags beyond the address, repository and model."""
    scenarios: tuple[str, ...] | None = None
    """Only these scenarios (``None``: all of them)."""


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("unary-c1", "unary, 1 image/call, c=1", ("--mode", "unary", "--concurrency", "1")),
    Scenario("unary-c64", "unary, 1 image/call, c=64", ("--mode", "unary", "--concurrency", "64")),
    Scenario(
        "unary-k32-c8",
        "unary, 32 images/call, c=8",
        ("--mode", "unary", "--images", "32", "--concurrency", "8"),
    ),
    Scenario(
        "stream-c4",
        "stream, 4 streams x 64 in flight",
        ("--mode", "stream", "--concurrency", "4", "--window", "64"),
    ),
)

SERVERS: tuple[ServerConfig, ...] = (
    ServerConfig("echo", "echo (protocol limit)", "echo"),
    ServerConfig("batching", "digitserve", "digitserve"),
    ServerConfig("no-batching", "digitserve --no-batching", "digitserve", ("--no-batching",)),
    # The cost of metrics: the same server with no instrumentation at all.
    ServerConfig(
        "no-metrics",
        "digitserve --no-metrics-enabled",
        "digitserve",
        ("--no-metrics-enabled",),
        scenarios=("unary-c1", "unary-c64"),
    ),
)

# The rows the checks compare.
IDLE = "unary-c1"
UNARY_LOAD = "unary-c64"
MULTI_IMAGE = "unary-k32-c8"
STREAM = "stream-c4"
ECHO = "echo"
DIGITSERVE = "batching"
UNBATCHED = "no-batching"
UNMETERED = "no-metrics"


@dataclass(frozen=True)
class SuiteSettings:
    """What the suite runs; from flags, then ``DIGITSERVE_*`` variables, then defaults."""

    data_dir: Path | None = None
    """MNIST folder: test images for the load, training data if a model must be trained."""
    out: Path = Path("results")
    """Folder the JSON and markdown results are written to."""
    model_repo: Path = Path("models")
    """Model repository whose newest version of ``model_name`` is benchmarked."""
    model_name: str = "mnist"
    """Model to benchmark."""
    train_profile: str = "quick"
    """``digitserve-train`` profile used when no version is published."""
    warmup: float = 2.0
    """Seconds of load before each scenario's measurement."""
    duration: float = 6.0
    """Seconds each scenario is measured for."""
    raw_seconds: float = 1.0
    """Seconds the raw model is timed for at each batch size."""
    client_processes: int = 1
    """``digitserve-bench --processes`` for every scenario."""
    servers: tuple[str, ...] = tuple(s.name for s in SERVERS)
    """Names of the server configurations to run."""
    scenarios: tuple[str, ...] = tuple(s.name for s in SCENARIOS)
    """Names of the scenarios to run."""
    start_timeout: float = 180.0
    """Seconds a server may take to load and warm up its model."""

    def __post_init__(self) -> None:
        if not (self.warmup >= 0 and self.duration > 0 and self.raw_seconds > 0):
            raise ValueError("warmup must be >= 0, duration and raw seconds > 0")
        if self.client_processes < 1:
            raise ValueError(f"client processes must be >= 1, got {self.client_processes}")
        for name in self.servers:
            if name not in {s.name for s in SERVERS}:
                raise ValueError(f"unknown server {name!r}: choose from {_names(SERVERS)}")
        for name in self.scenarios:
            if name not in {s.name for s in SCENARIOS}:
                raise ValueError(f"unknown scenario {name!r}: choose from {_names(SCENARIOS)}")


def _names(items: Sequence[Scenario | ServerConfig]) -> str:
    return ", ".join(item.name for item in items)


# -- checks and rendering (pure) --------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One target: a measured figure against a bound computed from the other figures."""

    name: str
    measured: float | None
    target: float | None
    unit: str
    higher_is_better: bool
    basis: str
    """How the target was computed."""

    @property
    def ratio(self) -> float | None:
        """measured / target (>= 1 passes a higher-is-better check, <= 1 the others)."""
        if self.measured is None or not self.target:
            return None
        return self.measured / self.target

    @property
    def passed(self) -> bool | None:
        """None when a figure it needs is missing."""
        if self.measured is None or self.target is None:
            return None
        if self.higher_is_better:
            return self.measured >= self.target
        return self.measured <= self.target


def _figure(results: Mapping[str, Any], server: str, scenario: str, key: str) -> float | None:
    """A figure of one scenario on one server: ``calls_per_s``, ``images_per_s`` or ``p50``."""
    result = results.get("servers", {}).get(server, {}).get(scenario)
    if not result or result.get("error") or not result.get("calls"):
        return None
    if key in ("p50", "p95", "p99", "max"):
        latency = result.get("latency_ms") or {}
        value = latency.get(key)
    else:
        value = result.get(key)
    return None if value is None else float(value)


def _raw(results: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """The raw model's batch-1 p50 latency (ms) and best images/s over batch sizes."""
    rows = results.get("raw_model") or []
    batch1 = next((r["latency_ms"]["p50"] for r in rows if r["batch_size"] == 1), None)
    best = max((r["images_per_s"] for r in rows), default=None)
    return batch1, best


def _product(factor: float, value: float | None) -> float | None:
    return None if value is None else factor * value


def evaluate(results: Mapping[str, Any]) -> list[Check]:
    """The targets of the benchmark, computed from one run's figures."""
    raw_batch1, raw_best = _raw(results)
    echo_idle = _figure(results, ECHO, IDLE, "p50")
    idle_target = (
        None
        if raw_batch1 is None or echo_idle is None
        else raw_batch1 + echo_idle + IDLE_ALLOWANCE_MS
    )
    echo_load = _figure(results, ECHO, UNARY_LOAD, "calls_per_s")
    bounds = [b for b in (_product(0.8, echo_load), _product(0.9, raw_best)) if b is not None]
    load_target = min(bounds) if echo_load is not None and raw_best is not None else None
    unbatched = _figure(results, UNBATCHED, UNARY_LOAD, "images_per_s")
    return [
        Check(
            f"idle latency: digitserve {IDLE} p50",
            _figure(results, DIGITSERVE, IDLE, "p50"),
            idle_target,
            "ms",
            higher_is_better=False,
            basis=f"raw model batch-1 p50 + echo {IDLE} p50 + {IDLE_ALLOWANCE_MS} ms",
        ),
        Check(
            f"single-image load: digitserve {UNARY_LOAD} calls/s",
            _figure(results, DIGITSERVE, UNARY_LOAD, "calls_per_s"),
            load_target,
            "calls/s",
            higher_is_better=True,
            basis=f"min(0.8 x echo {UNARY_LOAD} calls/s, 0.9 x raw model best images/s)",
        ),
        Check(
            f"stream: digitserve {STREAM} images/s",
            _figure(results, DIGITSERVE, STREAM, "images_per_s"),
            _product(0.9, raw_best),
            "images/s",
            higher_is_better=True,
            basis="0.9 x raw model best images/s",
        ),
        Check(
            f"multi-image calls: digitserve {MULTI_IMAGE} images/s",
            _figure(results, DIGITSERVE, MULTI_IMAGE, "images_per_s"),
            _product(0.9, raw_best),
            "images/s",
            higher_is_better=True,
            basis="0.9 x raw model best images/s",
        ),
        Check(
            f"batching gain: {UNARY_LOAD} images/s, batching on",
            _figure(results, DIGITSERVE, UNARY_LOAD, "images_per_s"),
            _product(3.0, unbatched),
            "images/s",
            higher_is_better=True,
            basis=f"3 x batching off ({UNBATCHED} {UNARY_LOAD})",
        ),
        Check(
            f"metrics cost: digitserve {IDLE} p50",
            _figure(results, DIGITSERVE, IDLE, "p50"),
            _product(1.05, _figure(results, UNMETERED, IDLE, "p50")),
            "ms",
            higher_is_better=False,
            basis=f"1.05 x metrics off ({UNMETERED} {IDLE} p50)",
        ),
    ]


def _num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _verdict(passed: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "n/a"}[passed]


def render_markdown(results: Mapping[str, Any], checks: Sequence[Check]) -> str:
    """The report: targets, then every server and scenario, then the raw model."""
    env = results.get("environment", {})
    model = results.get("model", {})
    settings = results.get("settings", {})
    lines = [
        f"# digitserve benchmark, {results.get('started_at', '')}",
        "",
        f"- model: {model.get('name', '?')} version {model.get('version', '?')} "
        f"({model.get('architecture') or 'architecture unknown'}), from {model.get('path', '?')}",
        f"- machine: {env.get('cpus', '?')} CPUs, {env.get('platform', '?')}; load average "
        f"{env.get('load_before', '?')} before, {env.get('load_after', '?')} after "
        "(other work on the machine skews absolute figures)",
        f"- software: Python {env.get('python', '?')}, grpcio {env.get('grpcio', '?')}, "
        f"TensorFlow {env.get('tensorflow', '?')}",
        f"- load: digitserve-bench in its own process ({settings.get('client_processes', 1)} "
        f"client process(es)), {settings.get('warmup', '?')} s warm-up + "
        f"{settings.get('duration', '?')} s per scenario; {results.get('data', '')}",
        "",
        "## Targets",
        "",
        "| check | measured | target | measured / target | result | target is |",
        "| --- | ---: | ---: | ---: | :---: | --- |",
    ]
    for check in checks:
        op = ">=" if check.higher_is_better else "<="
        digits = 2 if check.unit == "ms" else 0
        lines.append(
            f"| {check.name} | {_num(check.measured, digits)} {check.unit} "
            f"| {op} {_num(check.target, digits)} | {_num(check.ratio, 2)} "
            f"| {_verdict(check.passed)} | {check.basis} |"
        )
    lines += [
        "",
        "## Servers",
        "",
        "Latencies in ms, of successful calls (stream: per item). Client CPU in cores.",
        "",
        "| scenario | server | calls/s | images/s | p50 | p95 | p99 | max | errors | client cpu |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    titles = {s.name: s.title for s in SCENARIOS}
    server_titles = {s.name: s.title for s in SERVERS}
    servers = results.get("servers", {})
    scenario_names = list(
        dict.fromkeys(name for per_server in servers.values() for name in per_server)
    )
    for scenario in scenario_names:
        for server, per_server in servers.items():
            result = per_server.get(scenario)
            if result is None:
                continue
            label = f"{scenario}: {titles.get(scenario, '')}".rstrip(": ")
            who = server_titles.get(server, server)
            if result.get("error"):
                lines.append(f"| {label} | {who} | error: {result['error']} ||||||||")
                continue
            latency = result.get("latency_ms") or {}
            errors = ", ".join(f"{k} {v}" for k, v in result.get("errors", {}).items()) or "-"
            lines.append(
                f"| {label} | {who} | {_num(result.get('calls_per_s'))} "
                f"| {_num(result.get('images_per_s'))} | {_num(latency.get('p50'), 2)} "
                f"| {_num(latency.get('p95'), 2)} | {_num(latency.get('p99'), 2)} "
                f"| {_num(latency.get('max'), 2)} | {errors} "
                f"| {_num(result.get('client_cpu_cores'), 2)} |"
            )
    raw = results.get("raw_model") or []
    if raw:
        lines += [
            "",
            "## Raw model",
            "",
            "The SavedModel called in-process by one thread, as the server's runner calls it.",
            "",
            "| batch size | images/s | p50 ms per call | p99 ms per call |",
            "| ---: | ---: | ---: | ---: |",
        ]
        for row in raw:
            lines.append(
                f"| {row['batch_size']} | {_num(row['images_per_s'])} "
                f"| {_num(row['latency_ms']['p50'], 3)} | {_num(row['latency_ms']['p99'], 3)} |"
            )
    return "\n".join(lines) + "\n"


# -- the model ----------------------------------------------------------------------------


def newest_version(repo: Path, model: str) -> Path | None:
    """The folder of the newest published version whose files match its manifest."""
    for version in reversed(list_versions(repo, model)):
        path = repo / model / str(version)
        try:
            verify_version(path)
        except ManifestError:
            continue
        return path
    return None


def train_quick_model(settings: SuiteSettings, say: Callable[[str], None]) -> None:
    """Publish a first version with ``digitserve-train`` (profile from settings)."""
    script = Path(sys.executable).with_name("digitserve-train")
    command = [str(script)] if script.exists() else [sys.executable, "-c", _TRAIN_SNIPPET]
    command += [
        "--profile",
        settings.train_profile,
        "--model-repo",
        str(settings.model_repo),
        "--model-name",
        settings.model_name,
        "--progress",
        "off",
    ]
    if settings.data_dir is not None:
        command += ["--data-dir", str(settings.data_dir)]
    say(f"no published {settings.model_name} in {settings.model_repo}: {' '.join(command)}")
    subprocess.run(command, check=True)


def _model_info(path: Path) -> dict[str, Any]:
    metadata_ = read_manifest(path).metadata
    return {
        "name": path.parent.name,
        "version": int(path.name),
        "path": str(path),
        "architecture": metadata_.get("architecture"),
        "test_accuracy": metadata_.get("test_accuracy"),
    }


# -- the raw model ------------------------------------------------------------------------


def batch_sizes(limit: int = MAX_BATCH_SIZE) -> list[int]:
    """1, 2, 4, ... up to ``limit``."""
    sizes = [1]
    while sizes[-1] * 2 <= limit:
        sizes.append(sizes[-1] * 2)
    return sizes


def measure_raw_model(
    path: Path, images: np.ndarray, seconds: float, say: Callable[[str], None]
) -> list[dict[str, Any]]:
    """images/s and latency per call of the SavedModel at each batch size, in this process."""
    from .model import SavedModelRunner

    runner = SavedModelRunner(path)
    rows = []
    try:
        for size in batch_sizes():
            batch = images[np.arange(size) % len(images)]
            for _ in range(3):
                runner.predict(batch)
            latencies: list[float] = []
            end = time.perf_counter() + seconds
            while len(latencies) < 5 or time.perf_counter() < end:
                started = time.perf_counter()
                runner.predict(batch)
                latencies.append(time.perf_counter() - started)
            ms = np.array(latencies) * 1000.0
            rows.append(
                {
                    "batch_size": size,
                    "calls": len(latencies),
                    "images_per_s": round(size * len(latencies) / sum(latencies), 1),
                    "latency_ms": {
                        "p50": round(float(np.percentile(ms, 50, method="inverted_cdf")), 3),
                        "p99": round(float(np.percentile(ms, 99, method="inverted_cdf")), 3),
                        "mean": round(float(ms.mean()), 3),
                    },
                }
            )
            say(f"raw model batch {size}: {rows[-1]['images_per_s']:,.0f} images/s")
    finally:
        runner.close()
    return rows


# -- servers in their own processes -------------------------------------------------------


def _server_environment() -> dict[str, str]:
    """This environment without ``DIGITSERVE_*`` variables: servers run their defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    return env


class ServerProcess:
    """A server of one configuration in a child process; ``port`` once it serves."""

    def __init__(self, config: ServerConfig, repo: Path, model: str, log_path: Path) -> None:
        self.config = config
        self.port = 0
        self._ready_file = Path(tempfile.mkdtemp(prefix="digitserve-bench-")) / "ready"
        command = [sys.executable, "-m", "digitserve.server.benchsuite", f"serve-{config.kind}"]
        command += ["--ready-file", str(self._ready_file)]
        if config.kind == "digitserve":
            command += ["--", *digitserve_args(repo, model), *config.server_args]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("wb")
        self._process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=_server_environment()
        )
        self._log_path = log_path

    def wait_ready(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while not self._ready_file.exists():
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"{self.config.name} server exited with status {self._process.returncode}; "
                    f"see {self._log_path}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.config.name} server not ready after {timeout:g} s")
            time.sleep(0.1)
        self.port = int(self._ready_file.read_text().strip())
        return self.port

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log.close()
        shutil.rmtree(self._ready_file.parent, ignore_errors=True)


def digitserve_args(repo: Path, model: str) -> list[str]:
    """``digitserve-server`` flags of every digitserve configuration: a private address."""
    return [
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--metrics-host",
        "127.0.0.1",
        "--metrics-port",
        "0",
        "--model-repo",
        str(repo),
        "--default-model",
        model,
    ]


def run_bench(
    target: str, scenario: Scenario, settings: SuiteSettings, data_dir: Path | None
) -> dict[str, Any]:
    """One scenario's ``digitserve-bench`` result, run in its own process."""
    command = [sys.executable, "-m", "digitserve.client.bench", "--target", target]
    command += ["--json", "--quiet", "--warmup", str(settings.warmup)]
    command += ["--duration", str(settings.duration)]
    command += ["--processes", str(settings.client_processes)]
    if data_dir is not None:
        command += ["--data-dir", str(data_dir)]
    command += list(scenario.bench_args)
    timeout = settings.warmup + settings.duration + 180.0
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"digitserve-bench did not finish within {timeout:g} s"}
    try:
        report = json.loads(done.stdout)
        result: dict[str, Any] = report["results"][0]
    except (ValueError, KeyError, IndexError):
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"digitserve-bench exited with {done.returncode}: {tail}"}
    return result


# -- the suite ----------------------------------------------------------------------------


def _load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def _version(*distributions: str) -> str:
    for name in distributions:
        with contextlib.suppress(metadata.PackageNotFoundError):
            return metadata.version(name)
    return "?"


def run_suite(settings: SuiteSettings, say: Callable[[str], None]) -> dict[str, Any]:
    """Run everything and return the results (JSON-ready)."""
    from digitserve.client.bench import load_images

    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    load_before = _load_average()
    path = newest_version(settings.model_repo, settings.model_name)
    if path is None:
        train_quick_model(settings, say)
        path = newest_version(settings.model_repo, settings.model_name)
        if path is None:
            raise RuntimeError(f"training published no {settings.model_name} version")
    model = _model_info(path)
    say(f"benchmarking {settings.model_name} version {model['version']} from {path}")
    images, data = load_images(settings.data_dir, seed=0)
    results: dict[str, Any] = {
        "started_at": started,
        "model": model,
        "data": data,
        "settings": {
            **{k: v for k, v in asdict(settings).items() if k not in {"out", "data_dir"}},
            "model_repo": str(settings.model_repo),
        },
        "raw_model": measure_raw_model(path, images, settings.raw_seconds, say),
        "servers": {},
    }
    with tempfile.TemporaryDirectory(prefix="digitserve-bench-repo-") as private:
        repo = Path(private)
        shutil.copytree(path, repo / settings.model_name / path.name)
        for config in SERVERS:
            if config.name not in settings.servers:
                continue
            say(f"starting the {config.name} server")
            server = ServerProcess(
                config, repo, settings.model_name, settings.out / "logs" / f"{config.name}.log"
            )
            per_server: dict[str, Any] = {}
            results["servers"][config.name] = per_server
            try:
                port = server.wait_ready(settings.start_timeout)
                for scenario in SCENARIOS:
                    if scenario.name not in settings.scenarios:
                        continue
                    if config.scenarios is not None and scenario.name not in config.scenarios:
                        continue
                    say(f"{config.name}: {scenario.name} ({scenario.title})")
                    result = run_bench(f"127.0.0.1:{port}", scenario, settings, settings.data_dir)
                    per_server[scenario.name] = result
            except RuntimeError as exc:
                say(f"{config.name}: {exc}")
                for scenario in SCENARIOS:
                    if config.scenarios is None or scenario.name in config.scenarios:
                        per_server.setdefault(scenario.name, {"error": str(exc)})
            finally:
                server.stop()
    results["environment"] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(terse=True),
        "python": platform.python_version(),
        "grpcio": _version("grpcio"),
        "tensorflow": _version("tensorflow-cpu", "tensorflow"),
        "load_before": load_before,
        "load_after": _load_average(),
    }
    return results


def write_results(results: Mapping[str, Any], markdown: str, out: Path) -> tuple[Path, Path]:
    """Save the JSON and markdown reports under ``out`` (timestamped; also as latest.*)."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    json_path, md_path = out / f"bench-{stamp}.json", out / f"bench-{stamp}.md"
    json_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(markdown, encoding="utf-8")
    shutil.copyfile(json_path, out / "bench-latest.json")
    shutil.copyfile(md_path, out / "bench-latest.md")
    return json_path, md_path


# -- the servers' entry points (run by ServerProcess) --------------------------------------


def _announce(ready_file: Path, port: int) -> None:
    partial = ready_file.with_suffix(".part")
    partial.write_text(f"{port}\n")
    partial.replace(ready_file)


async def _until_terminated() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _serve_digitserve(server_argv: list[str], ready_file: Path) -> None:
    """digitserve exactly as ``digitserve-server`` runs it, announcing its port when serving."""
    settings = parse_settings(server_argv)
    logs.configure(settings.log_level, settings.log_format)
    server, port = await create_server(settings)
    try:
        await server.wait_until_serving()
        _announce(ready_file, port)
        await _until_terminated()
    finally:
        await server.stop()


class EchoClassifier(pb_grpc.DigitClassifierServicer):
    """The ``DigitClassifier`` contract answered with a constant prediction, no model."""

    def __init__(self) -> None:
        self._prediction = pb.Prediction(digit=0, confidence=1.0, probabilities=[1.0] + [0.0] * 9)
        self._model = pb.ModelVersionRef(name="echo", version=1)
        self._responses: dict[int, pb.ClassifyResponse] = {}

    async def Classify(
        self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyResponse:
        count = len(request.images)
        response = self._responses.get(count)
        if response is None:
            response = pb.ClassifyResponse(
                predictions=[self._prediction] * count, model=self._model
            )
            self._responses[count] = response
        return response

    async def ClassifyStream(
        self,
        request_iterator: AsyncIterator[pb.ClassifyStreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ClassifyStreamResponse]:
        async for request in request_iterator:
            yield pb.ClassifyStreamResponse(
                id=request.id, prediction=self._prediction, model=self._model
            )

    async def GetModelStatus(
        self, request: pb.GetModelStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelStatusResponse:
        return pb.GetModelStatusResponse()


async def _serve_echo(ready_file: Path) -> None:
    """The echo server, with digitserve's gRPC server options."""
    server = grpc.aio.server(options=grpc_options(parse_settings([])))
    pb_grpc.add_DigitClassifierServicer_to_server(EchoClassifier(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        _announce(ready_file, port)
        await _until_terminated()
    finally:
        await server.stop(1.0)


def _serve_main(kind: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"benchsuite serve-{kind}")
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("server_args", nargs="*")
    args = parser.parse_args(argv)
    if kind == "echo":
        asyncio.run(_serve_echo(args.ready_file))
    else:
        asyncio.run(_serve_digitserve(args.server_args, args.ready_file))
    return 0


# -- command line -------------------------------------------------------------------------


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def build_parser() -> argparse.ArgumentParser:
    defaults = SuiteSettings()
    parser = argparse.ArgumentParser(
        prog="python -m digitserve.server.benchsuite",
        description="digitserve beside the raw model and an echo server, in one run.",
    )
    add = parser.add_argument
    add("--data-dir", type=Path, help="MNIST folder (default $DIGITSERVE_DATA_DIR)")
    add("--out", type=Path, default=defaults.out, help="results folder (default results)")
    add("--model-repo", type=Path, default=defaults.model_repo, help="model repository")
    add("--model-name", default=defaults.model_name, help="model to benchmark")
    add("--train-profile", default=defaults.train_profile, help="profile if training is needed")
    add("--warmup", type=float, default=defaults.warmup, help="warm-up seconds per scenario")
    add("--duration", type=float, default=defaults.duration, help="seconds per scenario")
    add("--raw-seconds", type=float, default=defaults.raw_seconds, help="seconds per batch size")
    add("--client-processes", type=int, default=1, help="digitserve-bench --processes")
    add("--servers", type=_csv, default=defaults.servers, help=f"of: {_names(SERVERS)}")
    add("--scenarios", type=_csv, default=defaults.scenarios, help=f"of: {_names(SCENARIOS)}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in ("serve-echo", "serve-digitserve"):
        return _serve_main(args_list[0].removeprefix("serve-"), args_list[1:])
    args = build_parser().parse_args(args_list)
    data_dir = args.data_dir or os.environ.get(f"{ENV_PREFIX}DATA_DIR") or None
    try:
        settings = SuiteSettings(
            data_dir=Path(data_dir) if data_dir else None,
            out=args.out,
            model_repo=args.model_repo,
            model_name=args.model_name,
            train_profile=args.train_profile,
            warmup=args.warmup,
            duration=args.duration,
            raw_seconds=args.raw_seconds,
            client_processes=args.client_processes,
            servers=args.servers,
            scenarios=args.scenarios,
        )
    except ValueError as exc:
        print(f"benchsuite: {exc}", file=sys.stderr)
        return 2

    def say(message: str) -> None:
        print(f"benchsuite: {message}", file=sys.stderr, flush=True)

    try:
        results = run_suite(settings, say)
    except (subprocess.CalledProcessError, RuntimeError, ManifestError) as exc:
        say(f"error: {exc}")
        return 1
    checks = evaluate(results)
    results["checks"] = [
        {**asdict(check), "ratio": check.ratio, "passed": check.passed} for check in checks
    ]
    markdown = render_markdown(results, checks)
    json_path, md_path = write_results(results, markdown, settings.out)
    print(markdown)
    say(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
