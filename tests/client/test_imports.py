"""The client installs without TensorFlow: importing it must not pull TensorFlow in."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# What the base install provides: digitserve itself, grpcio (+ health checking),
# protobuf, numpy and Pillow ...
BASE = {"digitserve", "grpc", "grpc_health", "google", "numpy", "PIL"}
# ... and what grpc brings along: its typing-extensions dependency, its Cython
# core, and the grpcio-tools / grpcio-reflection packages its __init__ imports
# when they happen to be installed (as in the dev environment).
GRPC_COMPANIONS = {"typing_extensions", "cython_runtime", "grpc_tools", "grpc_reflection"}
FORBIDDEN = {"tensorflow", "keras", "tf_keras", "pydantic", "pydantic_settings"}

PROBE = """
import json, sys
import digitserve.client
import digitserve.client.cli
tops = {name.split(".")[0] for name in sys.modules}
tops |= {name for name in sys.modules if name.startswith("digitserve.")}
third_party = sorted(
    top for top in tops
    if top not in sys.stdlib_module_names and not top.startswith("_") and top != "__main__"
)
print(json.dumps(third_party))
"""


@pytest.fixture(scope="module")
def imported() -> set[str]:
    """Top-level packages and digitserve modules a fresh interpreter has after the imports."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_importing_the_client_and_cli_loads_only_base_dependencies(imported: set[str]) -> None:
    packages = {name for name in imported if "." not in name}
    assert "digitserve.client.cli" in imported
    assert not packages & FORBIDDEN
    assert packages <= BASE | GRPC_COMPANIONS, packages - BASE - GRPC_COMPANIONS


def test_importing_the_client_loads_neither_server_nor_trainer(imported: set[str]) -> None:
    assert not {"digitserve.server", "digitserve.trainer"} & imported
