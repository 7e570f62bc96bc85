"""Benchmark: does memory stay flat across model load/unload cycles?

Publishes a copy of a version again and again into a scratch repository while a
version manager (the server's, with the real SavedModel runner) hot-reloads it,
and prints the process RSS after 5 and after 50 cycles. Target: RSS after 50
cycles within 10% of RSS after 5.

    python scripts/bench_reload_rss.py --model-repo models [--model mnist] [--cycles 50]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from digitserve.server import repository
from digitserve.server.batching import BatchingConfig
from digitserve.server.versions import ModelManager


def rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def run(source: Path, model: str, cycles: int) -> dict[str, float]:
    scratch = Path(tempfile.mkdtemp(prefix="reload-bench-"))
    try:
        manager = ModelManager(scratch, BatchingConfig(max_batch_size=128))
        images = np.zeros((8, 28, 28), np.uint8)
        marks: dict[int, int] = {}
        started = time.perf_counter()
        for cycle in range(1, cycles + 1):
            version = repository.import_version(source, scratch, model)
            await manager.refresh()
            async with manager.lease(model) as v:
                assert v.version == version and v.batcher is not None
                await v.batcher.submit(images)
            await asyncio.sleep(0.01)  # let the old version's unload finish
            # keep the disk small: drop versions that are no longer served
            for old in repository.list_versions(scratch, model)[:-1]:
                shutil.rmtree(scratch / model / str(old))
            gc.collect()
            if cycle in (5, cycles):
                marks[cycle] = rss_bytes()
        await manager.close()
        seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "cycles": cycles,
        "rss_after_5_mib": marks[5] / 2**20,
        f"rss_after_{cycles}_mib": marks[cycles] / 2**20,
        "growth_ratio": marks[cycles] / marks[5],
        "seconds_per_cycle": seconds / cycles,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repo", type=Path, default=Path("models"))
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--version", type=int, help="version to copy (default: newest)")
    parser.add_argument("--cycles", type=int, default=50)
    args = parser.parse_args()
    versions = repository.list_versions(args.model_repo, args.model)
    if not versions:
        raise SystemExit(f"no published {args.model} in {args.model_repo}: run make run first")
    source = args.model_repo / args.model / str(args.version or versions[-1])
    result = asyncio.run(run(source, args.model, max(args.cycles, 6)))
    print(json.dumps(result, indent=2))
    verdict = "PASS" if result["growth_ratio"] <= 1.10 else "FAIL"
    print(
        f"RSS growth from cycle 5 to {result['cycles']}: "
        f"{(result['growth_ratio'] - 1) * 100:+.1f}% (target <= +10%): {verdict}"
    )


if __name__ == "__main__":
    main()
