"""digitserve-bench: every mode against a real server, error counting, the report's shape.

The benchmark runs in process (``main``) for about a second per run against the
shared test server. Nothing here asserts on speed: only that the load was
generated, answered, counted and reported as documented.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from digitserve.client import bench

from ..conftest import ServerThread

SHORT = ["--warmup", "0.2", "--duration", "1", "--json", "--quiet"]
LEVEL_FIELDS = {
    "mode",
    "images_per_call",
    "loop",
    "concurrency",
    "window",
    "rate",
    "arrivals",
    "processes",
    "duration_s",
    "calls",
    "images",
    "errors",
    "error_count",
    "calls_per_s",
    "images_per_s",
    "latency_ms",
    "client_cpu_cores",
}


def run(target: str, *args: str, data_dir: Path | None = None) -> tuple[int, dict[str, Any], str]:
    """Exit status, JSON report and stderr of one in-process run."""
    out, err = io.StringIO(), io.StringIO()
    argv = ["--target", target, *SHORT, *args]
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]
    status = bench.main(argv, environ={}, stdout=out, stderr=err)
    return status, json.loads(out.getvalue()), err.getvalue()


def assert_answered(level: dict[str, Any]) -> None:
    """A level with successful calls only, and ordered latency figures."""
    assert set(level) >= LEVEL_FIELDS
    assert level["calls"] > 0 and level["calls_per_s"] > 0
    assert level["images"] == level["calls"] * level["images_per_call"]
    assert level["images_per_s"] > 0
    assert level["errors"] == {} and level["error_count"] == 0
    latency = level["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert latency["p50"] <= latency["max"] and latency["mean"] <= latency["max"]


def test_unary_closed_loop_runs_each_concurrency_level(
    shared_server: ServerThread, mnist_dir: Path
) -> None:
    status, report, _ = run(shared_server.target, "--concurrency", "1,4", data_dir=mnist_dir)
    assert status == 0
    assert report["tool"] == "digitserve-bench" and report["target"] == shared_server.target
    assert report["data"].startswith("MNIST test images (10000)")
    assert [level["concurrency"] for level in report["results"]] == [1, 4]
    for level in report["results"]:
        assert level["mode"] == "unary" and level["loop"] == "closed"
        assert level["images_per_call"] == 1 and level["rate"] is None
        assert level["duration_s"] == pytest.approx(1.0, abs=0.05)
        assert_answered(level)


def test_unary_calls_carry_the_requested_number_of_images(
    shared_server: ServerThread, mnist_dir: Path
) -> None:
    status, report, _ = run(
        shared_server.target, "--images", "4", "--concurrency", "2", data_dir=mnist_dir
    )
    assert status == 0
    (level,) = report["results"]
    assert level["images_per_call"] == 4
    assert_answered(level)


def test_stream_items_are_answered_and_timed(shared_server: ServerThread, mnist_dir: Path) -> None:
    status, report, _ = run(
        shared_server.target,
        *("--mode", "stream", "--concurrency", "2", "--window", "8"),
        data_dir=mnist_dir,
    )
    assert status == 0
    (level,) = report["results"]
    assert level["mode"] == "stream" and level["window"] == 8 and level["concurrency"] == 2
    assert_answered(level)


@pytest.mark.parametrize(
    "args",
    [
        ("--rate", "60", "--arrivals", "poisson"),
        ("--mode", "stream", "--rate", "60", "--arrivals", "fixed", "--concurrency", "2"),
    ],
    ids=["unary-poisson", "stream-fixed"],
)
def test_open_loop_reports_offered_and_achieved_rates(
    shared_server: ServerThread, mnist_dir: Path, args: tuple[str, ...]
) -> None:
    status, report, _ = run(shared_server.target, *args, data_dir=mnist_dir)
    assert status == 0
    (level,) = report["results"]
    assert level["loop"] == "open" and level["rate"] == 60.0
    assert level["arrivals"] == args[args.index("--arrivals") + 1]
    assert_answered(level)
    assert level["offered_rate"] > 0
    lag = level["send_lag_ms"]
    assert 0 <= lag["p50"] <= lag["p99"] <= lag["max"]
    # Latency counts from the scheduled send time, so it includes the send lag.
    assert level["latency_ms"]["max"] >= lag["p50"]


def test_an_open_loop_the_client_cannot_keep_up_with_counts_unsent_requests(
    shared_server: ServerThread,
) -> None:
    out = io.StringIO()
    argv = ["--target", shared_server.target, "--json", "--quiet", "--warmup", "0"]
    argv += ["--duration", "0.5", "--rate", "100000", "--timeout", "0.2"]
    assert bench.main(argv, environ={}, stdout=out, stderr=io.StringIO()) in (0, 1)
    (level,) = json.loads(out.getvalue())["results"]
    assert level["errors"][bench.NOT_SENT] > 0
    assert level["offered_rate"] > level["calls_per_s"]


@pytest.mark.parametrize("mode", ["unary", "stream"])
def test_errors_are_counted_by_status_code(shared_server: ServerThread, mode: str) -> None:
    status, report, _ = run(
        shared_server.target, "--mode", mode, "--model", "no-such-model", "--concurrency", "2"
    )
    assert status == 1  # the level had no successful call
    (level,) = report["results"]
    assert level["calls"] == 0 and level["latency_ms"] is None
    assert set(level["errors"]) == {"NOT_FOUND"}
    assert level["error_count"] == level["errors"]["NOT_FOUND"] > 0


def test_a_request_count_ends_the_measurement(shared_server: ServerThread) -> None:
    out, err = io.StringIO(), io.StringIO()
    argv = ["--target", shared_server.target, "--warmup", "0", "--requests", "25", "--json"]
    status = bench.main([*argv, "--concurrency", "3"], environ={}, stdout=out, stderr=err)
    assert status == 0
    (level,) = json.loads(out.getvalue())["results"]
    assert level["calls"] == 25
    assert "synthetic" in json.loads(out.getvalue())["data"]  # no data dir given


@pytest.mark.slow
def test_processes_split_the_load_and_merge_their_figures(shared_server: ServerThread) -> None:
    out = io.StringIO()
    argv = ["--target", shared_server.target, "--warmup", "0.2", "--requests", "40", "--json"]
    argv += ["--processes", "2", "--concurrency", "4", "--quiet"]
    assert bench.main(argv, environ={}, stdout=out, stderr=io.StringIO()) == 0
    (level,) = json.loads(out.getvalue())["results"]
    assert level["processes"] == 2
    assert level["calls"] == 40  # 20 from each process, merged
    assert_answered(level)


def test_the_default_output_is_a_table(shared_server: ServerThread) -> None:
    out = io.StringIO()
    argv = ["--target", shared_server.target, "--warmup", "0", "--requests", "5", "--quiet"]
    assert bench.main(argv, environ={}, stdout=out, stderr=io.StringIO()) == 0
    lines = out.getvalue().splitlines()
    assert lines[1].split()[:3] == ["load", "calls/s", "images/s"]
    assert lines[2].startswith("c=1 ") and lines[2].endswith("-")  # no errors


def test_an_unreachable_target_fails_with_a_message(refused_address: str) -> None:
    err = io.StringIO()
    argv = ["--target", refused_address, "--connect-timeout", "0.3", "--duration", "1"]
    assert bench.main(argv, environ={}, stdout=io.StringIO(), stderr=err) == 1
    assert "could not connect" in err.getvalue()


@pytest.mark.parametrize(
    "argv",
    [
        ["--mode", "stream", "--images", "4"],
        ["--version", "1", "--label", "stable"],
        ["--concurrency", "0"],
        ["--concurrency", "a,b"],
        ["--rate", "-5"],
        ["--duration", "0"],
    ],
)
def test_bad_command_lines_exit_2(argv: list[str]) -> None:
    err = io.StringIO()
    status = bench.main(argv, environ={}, stdout=io.StringIO(), stderr=err)
    assert status == 2 and err.getvalue()


def test_environment_gives_target_and_data_dir(tmp_path: Path) -> None:
    args = bench.build_parser().parse_args([])
    env = {"DIGITSERVE_TARGET": "10.0.0.1:9", "DIGITSERVE_DATA_DIR": str(tmp_path)}
    settings = bench.settings_from_args(args, env)
    assert settings.target == "10.0.0.1:9" and settings.data_dir == tmp_path
    flagged = bench.settings_from_args(bench.build_parser().parse_args(["--target", "h:1"]), env)
    assert flagged.target == "h:1"


def idx_bytes(images: np.ndarray) -> bytes:
    header = np.array([2051, len(images), 28, 28], dtype=">i4").tobytes()
    return header + images.astype(np.uint8).tobytes()


@pytest.mark.parametrize("compressed", [False, True])
def test_idx_test_images_are_read_plain_or_gzipped(tmp_path: Path, compressed: bool) -> None:
    images = np.random.default_rng(3).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    data = idx_bytes(images)
    name = "t10k-images-idx3-ubyte" + (".gz" if compressed else "")
    (tmp_path / name).write_bytes(gzip.compress(data) if compressed else data)
    loaded, description = bench.load_images(tmp_path, seed=0)
    np.testing.assert_array_equal(loaded, images)
    assert "(5)" in description


def test_a_malformed_idx_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(idx_bytes(np.zeros((2, 28, 28)))[:-10])
    with pytest.raises(bench.BenchError, match="expected 2 images"):
        bench.read_idx_images(path)


def test_without_data_synthetic_digits_are_used(tmp_path: Path) -> None:
    images, description = bench.load_images(tmp_path, seed=1)
    assert images.shape[1:] == (28, 28) and images.dtype == np.uint8
    assert "synthetic" in description
    assert all(image.max() == 255 and (image > 0).mean() < 0.5 for image in images[:20])
    np.testing.assert_array_equal(images, bench.synthetic_images(len(images), seed=1))


def test_the_bench_tool_imports_neither_tensorflow_nor_the_server() -> None:
    probe = (
        "import json, sys; import digitserve.client.bench; "
        "print(json.dumps(sorted(m for m in sys.modules if '.' not in m or "
        "m.startswith('digitserve.'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    modules = set(json.loads(done.stdout))
    assert "digitserve.client.bench" in modules
    assert not modules & {"tensorflow", "keras", "pydantic", "digitserve.server"}
