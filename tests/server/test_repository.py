"""The repository format: atomic publishing, manifests, labels, rollback, prune, CLI."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from digitserve.server import repository
from digitserve.server.model_cli import main as model_cli

MODEL = "m"
SPEC = {
    "inputs": {"images": repository.EXPECTED_INPUT},
    "outputs": {"probabilities": repository.EXPECTED_OUTPUT},
}


def publish(repo: Path, accuracy: float = 0.99, payload: bytes = b"weights") -> int:
    with repository.staging_dir(repo, MODEL) as staged:
        (staged / "variables").mkdir()
        (staged / "variables" / "data").write_bytes(payload)
        (staged / "saved_model.pb").write_bytes(b"graph")
        return repository.publish(staged, repo, MODEL, metadata={"test_accuracy": accuracy}, **SPEC)


def test_publish_numbers_versions_and_leaves_no_staging(tmp_path: Path) -> None:
    assert [publish(tmp_path) for _ in range(3)] == [1, 2, 3]
    assert repository.list_versions(tmp_path, MODEL) == [1, 2, 3]
    assert sorted(p.name for p in (tmp_path / MODEL).iterdir() if p.name.startswith(".st")) == []
    manifest = repository.verify_version(tmp_path / MODEL / "2")
    assert manifest.version == 2 and manifest.model == MODEL
    assert set(manifest.files) == {"saved_model.pb", "variables/data"}
    manifest.check_signature()


def test_concurrent_publishers_get_distinct_versions(tmp_path: Path) -> None:
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(publish(tmp_path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(1, 9))
    for v in results:
        repository.verify_version(tmp_path / MODEL / str(v))


def test_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), repository.staging_dir(tmp_path, MODEL) as staged:
        (staged / "partial").write_text("half")
        raise RuntimeError("export crashed")
    assert list((tmp_path / MODEL).iterdir()) == []
    assert repository.list_versions(tmp_path, MODEL) == []


def test_staging_folder_is_not_a_version(tmp_path: Path) -> None:
    publish(tmp_path)
    with repository.staging_dir(tmp_path, MODEL) as staged:
        (staged / "saved_model.pb").write_bytes(b"x")
        assert repository.list_versions(tmp_path, MODEL) == [1]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: (p / repository.MANIFEST_FILE).unlink(), "missing"),
        (lambda p: (p / "variables" / "data").write_bytes(b"tampered"), "checksum mismatch"),
        (lambda p: (p / "variables" / "data").unlink(), "files missing"),
        (lambda p: (p / "extra.bin").write_bytes(b"x"), "files not in the manifest"),
        (lambda p: (p / repository.MANIFEST_FILE).write_text("{"), "unreadable"),
        (lambda p: (p / repository.MANIFEST_FILE).write_text('{"format": 9}'), "format"),
    ],
)
def test_verification_failures(tmp_path: Path, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    publish(tmp_path)
    path = tmp_path / MODEL / "1"
    damage(path)
    with pytest.raises(repository.ManifestError, match=message):
        repository.verify_version(path)


def test_manifest_in_the_wrong_folder_fails(tmp_path: Path) -> None:
    publish(tmp_path)
    os.rename(tmp_path / MODEL / "1", tmp_path / MODEL / "7")
    with pytest.raises(repository.ManifestError, match="names version 1 but lies in folder 7"):
        repository.verify_version(tmp_path / MODEL / "7")


def test_labels_round_trip_and_validation(tmp_path: Path) -> None:
    publish(tmp_path)
    publish(tmp_path)
    assert repository.read_labels(tmp_path, MODEL) == {}
    assert repository.set_label(tmp_path, MODEL, "stable", 1) is None
    assert repository.set_label(tmp_path, MODEL, "stable", 2) == 1
    assert repository.read_labels(tmp_path, MODEL) == {"stable": 2}
    with pytest.raises(repository.RepositoryError, match="no version 9"):
        repository.set_label(tmp_path, MODEL, "canary", 9)
    with pytest.raises(repository.RepositoryError, match="invalid label"):
        repository.set_label(tmp_path, MODEL, "Bad Label", 1)
    assert repository.remove_label(tmp_path, MODEL, "stable") == 2
    with pytest.raises(repository.RepositoryError, match="no label 'stable'"):
        repository.remove_label(tmp_path, MODEL, "stable")


def test_label_cannot_point_at_a_corrupt_version(tmp_path: Path) -> None:
    publish(tmp_path)
    (tmp_path / MODEL / "1" / "saved_model.pb").write_bytes(b"changed")
    with pytest.raises(repository.ManifestError, match="checksum"):
        repository.set_label(tmp_path, MODEL, "stable", 1)


def test_rollback(tmp_path: Path) -> None:
    for _ in range(4):
        publish(tmp_path)
    repository.set_label(tmp_path, MODEL, "stable", 4)
    (tmp_path / MODEL / "3" / "saved_model.pb").write_bytes(b"corrupt")
    assert repository.rollback(tmp_path, MODEL) == (4, 2)  # skips the corrupt version 3
    assert repository.rollback(tmp_path, MODEL, to=4) == (2, 4)
    repository.set_label(tmp_path, MODEL, "stable", 1)
    with pytest.raises(repository.RepositoryError, match="older than 1"):
        repository.rollback(tmp_path, MODEL)
    assert repository.read_labels(tmp_path, MODEL) == {"stable": 1}


def test_prune_keeps_the_newest_and_labelled(tmp_path: Path) -> None:
    for _ in range(6):
        publish(tmp_path)
    repository.set_label(tmp_path, MODEL, "stable", 2)
    removed, spared = repository.prune(tmp_path, MODEL, keep=2)
    assert removed == [1, 3, 4] and spared == [2]
    assert repository.list_versions(tmp_path, MODEL) == [2, 5, 6]
    with pytest.raises(repository.RepositoryError, match="labelled stable"):
        repository.remove_version(tmp_path, MODEL, 2)
    repository.remove_version(tmp_path, MODEL, 5)
    assert repository.list_versions(tmp_path, MODEL) == [2, 6]
    with pytest.raises(repository.RepositoryError, match="--keep must be >= 1"):
        repository.prune(tmp_path, MODEL, keep=0)


def test_model_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--model-repo", str(tmp_path), "--model", MODEL]
    for accuracy in (0.981, 0.985, 0.99):
        publish(tmp_path, accuracy)
    assert model_cli([*base, "label", "set", "stable", "3"]) == 0
    assert "label stable -> version 3" in capsys.readouterr().out
    assert model_cli([*base, "list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [(v["version"], v["status"], v["labels"]) for v in listing] == [
        (1, "ok", []), (2, "ok", []), (3, "ok", ["stable"]),
    ]  # fmt: skip
    assert listing[0]["test_accuracy"] == pytest.approx(0.981)
    assert model_cli([*base, "rollback"]) == 0
    assert "rolled back to version 2 (was 3)" in capsys.readouterr().out
    assert model_cli([*base, "prune", "--keep", "1"]) == 0
    assert "removed versions [1]; kept labelled versions [2]" in capsys.readouterr().out
    assert model_cli([*base, "remove", "2"]) == 1
    assert "labelled stable" in capsys.readouterr().err
    assert model_cli([*base, "label", "remove", "stable"]) == 0
    assert model_cli([*base, "list"]) == 0
    table = capsys.readouterr().out
    assert "VERSION" in table and "98.50%" in table and "99.00%" in table
    assert model_cli(["--model-repo", str(tmp_path), "--model", "nope", "rollback"]) == 1
    assert "no model 'nope'" in capsys.readouterr().err


def test_import_copies_a_verified_version(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    source_repo, target_repo = tmp_path / "a", tmp_path / "b"
    publish(source_repo, accuracy=0.991)
    publish(target_repo)
    base = ["--model-repo", str(target_repo), "--model", MODEL]
    assert model_cli([*base, "import", str(source_repo / MODEL / "1")]) == 0
    assert "published as version 2" in capsys.readouterr().out
    copied = repository.verify_version(target_repo / MODEL / "2")
    assert copied.metadata["test_accuracy"] == pytest.approx(0.991)
    (source_repo / MODEL / "1" / "saved_model.pb").write_bytes(b"tampered")
    assert model_cli([*base, "import", str(source_repo / MODEL / "1")]) == 1
    assert "checksum mismatch" in capsys.readouterr().err
    assert repository.list_versions(target_repo, MODEL) == [1, 2]
