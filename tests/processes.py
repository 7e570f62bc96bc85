"""``digitserve-server`` as a child process, for tests of the real program."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

LISTENING = re.compile(r"listening on \S+ \(port (\d+)\)")
METRICS = re.compile(r"metrics on http://[^\s:]+:(\d+)/metrics")


def server_command() -> list[str]:
    """The ``digitserve-server`` console script of this environment (as in the image)."""
    script = Path(sys.executable).parent / "digitserve-server"
    if script.exists():
        return [str(script)]
    found = shutil.which("digitserve-server")
    assert found, "digitserve-server is not installed (pip install -e '.[server]')"
    return [found]


class ServerProcess:
    """A server on 127.0.0.1 with free gRPC and metrics ports, read from its log lines.

    Starting does not wait (start several at once: importing TensorFlow is slow);
    call ``wait_ports`` before using it.
    """

    def __init__(self, repo: Path, model: str, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [
                *server_command(),
                "--host", "127.0.0.1", "--port", "0",
                "--metrics-host", "127.0.0.1", "--metrics-port", "0",
                "--model-repo", str(repo), "--default-model", model, *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )  # fmt: skip
        self.lines: list[str] = []
        self.port = 0
        self.metrics_port = 0
        self._ports = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if m := METRICS.search(line):
                self.metrics_port = int(m.group(1))
            if m := LISTENING.search(line):
                self.port = int(m.group(1))
            if self.port and self.metrics_port:
                self._ports.set()
        self._ports.set()  # the process ended: stop waiting

    def wait_ports(self, timeout: float = 60) -> ServerProcess:
        assert self._ports.wait(timeout), f"the server logged no ports: {self.tail}"
        assert self.port and self.metrics_port, f"the server died: {self.tail}"
        return self

    @property
    def log(self) -> str:
        return "".join(self.lines)

    @property
    def tail(self) -> str:
        return "".join(self.lines[-30:])

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait(30)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
