"""The committed Python bindings are exactly what the codegen command writes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ..conftest import REPO_ROOT

GENERATED = REPO_ROOT / "protos" / "digitserve" / "v1"


def test_bindings_are_up_to_date(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent  # protoc-gen-mypy_grpc lives beside python
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)],
        check=True,
        env=env,
        capture_output=True,
    )
    fresh = {p.relative_to(tmp_path): p.read_text() for p in tmp_path.rglob("*") if p.is_file()}
    committed = {
        p.relative_to(REPO_ROOT / "protos"): p.read_text()
        for p in GENERATED.iterdir()
        if p.is_file() and "_pb2" in p.name
    }
    assert fresh.keys() == committed.keys(), "generated file set differs; run `make protos`"
    stale = sorted(str(name) for name, text in fresh.items() if committed[name] != text)
    assert not stale, f"stale generated bindings {stale}; run `make protos` and commit"


def test_contract_documents_every_field() -> None:
    """Each field and message of the .proto carries a comment (the contract is the docs)."""
    lines = (GENERATED / "digitserve.proto").read_text().splitlines()
    undocumented = []
    for index, line in enumerate(lines):
        stripped = line.strip()
        is_field = (
            stripped.endswith(";")
            and "=" in stripped
            and not stripped.startswith(("//", "option", "syntax", "package", "import", "reserved"))
        )
        documented = lines[index - 1].strip().startswith("//")
        # enum zero values are self-describing
        if is_field and not documented and not stripped.split()[0].endswith("_UNSPECIFIED"):
            undocumented.append(stripped)
    assert undocumented == []
