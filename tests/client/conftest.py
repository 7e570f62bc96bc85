"""Addresses with no gRPC server behind them, for the client's failure paths.

No fake gRPC server here: the client's behaviour against a real server is
tested end to end elsewhere. These sockets only make the transport fail in the
two ways a real network does: a refused connection and a peer that never answers.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest


@pytest.fixture
def refused_address() -> Iterator[str]:
    """An address whose connections are refused: a port bound (so no one else takes it)
    but not listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def silent_address() -> Iterator[str]:
    """An address that accepts TCP connections (in the kernel backlog) but never speaks."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"127.0.0.1:{sock.getsockname()[1]}"
