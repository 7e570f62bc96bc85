"""The on-disk model repository: layout, manifests, atomic publishing and labels.

Layout::

    <repo>/<model>/<version>/          one published version (a positive integer)
        saved_model.pb, variables/     the TensorFlow SavedModel
        metadata.json                  what the trainer recorded (metrics, parameters, ...)
        ...                            any other files (reports)
        manifest.json                  written last: every file's SHA-256, the serving
                                       signature and the metadata; a version without a
                                       manifest that verifies is never served
    <repo>/<model>/labels.json         {"stable": 3, "canary": 4}, replaced atomically
    <repo>/<model>/.staging-*/         versions being written; never read

Publishing writes a whole version into a staging directory beside the versions and
renames it into place last, so a reader sees either nothing or a complete version.

This module is pure Python (no TensorFlow, no gRPC): the trainer, the server and
the ``digitserve-model`` command share it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"
METADATA_FILE = "metadata.json"
LABELS_FILE = "labels.json"
STAGING_PREFIX = ".staging-"
MANIFEST_FORMAT = 1

# The serving signature every published version must expose.
SIGNATURE_NAME = "serving_default"
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_LABEL = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class RepositoryError(Exception):
    """A repository operation cannot be done; the message says why."""


class ManifestError(RepositoryError):
    """A version directory is incomplete or does not match its manifest."""


def validate_model_name(name: str) -> str:
    if not _MODEL_NAME.match(name):
        raise RepositoryError(
            f"invalid model name {name!r}: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def validate_label(label: str) -> str:
    if not _LABEL.match(label):
        raise RepositoryError(
            f"invalid label {label!r}: use 1-32 lowercase letters, digits, '_' or '-', "
            "starting with a letter"
        )
    return label


@dataclass(frozen=True)
class TensorSpec:
    """Dtype and shape of a signature tensor; ``None`` in a shape is any size."""

    dtype: str
    shape: tuple[int | None, ...]

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorSpec:
        return cls(dtype=str(data["dtype"]), shape=tuple(data["shape"]))


# What the server requires of a version's serving signature.
EXPECTED_INPUT = TensorSpec("uint8", (None, 28, 28))
EXPECTED_OUTPUT = TensorSpec("float32", (None, 10))


@dataclass(frozen=True)
class Manifest:
    """The verified description of one published version."""

    model: str
    version: int
    created_at: str
    files: dict[str, str]
    signature_name: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "model": self.model,
            "version": self.version,
            "created_at": self.created_at,
            "signature": {
                "name": self.signature_name,
                "inputs": {k: v.to_json() for k, v in self.inputs.items()},
                "outputs": {k: v.to_json() for k, v in self.outputs.items()},
            },
            "metadata": self.metadata,
            "files": self.files,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        if data.get("format") != MANIFEST_FORMAT:
            raise ManifestError(f"unsupported manifest format {data.get('format')!r}")
        try:
            sig = data["signature"]
            return cls(
                model=str(data["model"]),
                version=int(data["version"]),
                created_at=str(data["created_at"]),
                files={str(k): str(v) for k, v in data["files"].items()},
                signature_name=str(sig["name"]),
                inputs={k: TensorSpec.from_json(v) for k, v in sig["inputs"].items()},
                outputs={k: TensorSpec.from_json(v) for k, v in sig["outputs"].items()},
                metadata=dict(data.get("metadata") or {}),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ManifestError(f"malformed manifest: {exc!r}") from exc

    def check_signature(self) -> None:
        """Raise ManifestError unless the signature is the one the server serves."""
        expected_in = {INPUT_NAME: EXPECTED_INPUT}
        expected_out = {OUTPUT_NAME: EXPECTED_OUTPUT}
        if (
            self.signature_name != SIGNATURE_NAME
            or self.inputs != expected_in
            or self.outputs != expected_out
        ):
            raise ManifestError(
                "wrong serving signature: expected "
                f"{SIGNATURE_NAME}({INPUT_NAME}: uint8[N,28,28]) -> "
                f"{OUTPUT_NAME}: float32[N,10], manifest declares "
                f"{self.signature_name}({_describe(self.inputs)}) -> {_describe(self.outputs)}"
            )


def _describe(specs: Mapping[str, TensorSpec]) -> str:
    return ", ".join(
        f"{name}: {s.dtype}[{','.join('N' if d is None else str(d) for d in s.shape)}]"
        for name, s in specs.items()
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _content_files(version_dir: Path) -> list[Path]:
    return sorted(p for p in version_dir.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)


def _atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON to a temporary file in the same folder, fsync, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_manifest(
    version_dir: Path,
    *,
    model: str,
    version: int,
    inputs: Mapping[str, TensorSpec],
    outputs: Mapping[str, TensorSpec],
    signature_name: str = SIGNATURE_NAME,
    metadata: Mapping[str, Any] | None = None,
) -> Manifest:
    """Hash every file of ``version_dir`` and write its manifest (last)."""
    manifest = Manifest(
        model=model,
        version=version,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        files={
            p.relative_to(version_dir).as_posix(): sha256_file(p)
            for p in _content_files(version_dir)
        },
        signature_name=signature_name,
        inputs=dict(inputs),
        outputs=dict(outputs),
        metadata=dict(metadata or {}),
    )
    _atomic_write_json(version_dir / MANIFEST_FILE, manifest.to_json())
    return manifest


def read_manifest(version_dir: Path) -> Manifest:
    """Read a manifest without checking the files against it."""
    path = version_dir / MANIFEST_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{path} is missing (version incomplete)") from None
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path} is unreadable: {exc}") from exc
    if not isinstance(data, dict):
        raise ManifestError(f"{path} is not a JSON object")
    return Manifest.from_json(data)


def verify_version(version_dir: Path) -> Manifest:
    """Return the manifest of ``version_dir`` if every file matches it, else raise."""
    manifest = read_manifest(version_dir)
    if manifest.version != int(version_dir.name):
        raise ManifestError(
            f"manifest names version {manifest.version} but lies in folder {version_dir.name}"
        )
    present = {p.relative_to(version_dir).as_posix() for p in _content_files(version_dir)}
    missing = sorted(set(manifest.files) - present)
    if missing:
        raise ManifestError(f"files missing: {', '.join(missing[:5])}")
    extra = sorted(present - set(manifest.files))
    if extra:
        raise ManifestError(f"files not in the manifest: {', '.join(extra[:5])}")
    for rel, expected in manifest.files.items():
        if sha256_file(version_dir / rel) != expected:
            raise ManifestError(f"checksum mismatch: {rel}")
    return manifest


def fingerprint(version_dir: Path) -> tuple[tuple[str, int, int], ...]:
    """A cheap identity of a version's files (names, sizes, mtimes) to notice changes."""
    entries = []
    for p in sorted(version_dir.rglob("*")):
        with contextlib.suppress(FileNotFoundError):
            st = p.stat()
            entries.append((p.relative_to(version_dir).as_posix(), st.st_size, st.st_mtime_ns))
    return tuple(entries)


def list_models(repo: Path) -> list[str]:
    if not repo.is_dir():
        return []
    return sorted(p.name for p in repo.iterdir() if p.is_dir() and _MODEL_NAME.match(p.name))


def list_versions(repo: Path, model: str) -> list[int]:
    """Published version numbers of ``model`` (folders named by a positive integer)."""
    model_dir = repo / model
    if not model_dir.is_dir():
        return []
    versions = []
    for p in model_dir.iterdir():
        if p.is_dir() and p.name.isdigit() and int(p.name) > 0 and p.name == str(int(p.name)):
            versions.append(int(p.name))
    return sorted(versions)


@contextlib.contextmanager
def staging_dir(repo: Path, model: str) -> Iterator[Path]:
    """A fresh folder beside the versions to build a version in; removed on failure."""
    model_dir = repo / validate_model_name(model)
    model_dir.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=model_dir))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def publish(
    staged: Path,
    repo: Path,
    model: str,
    *,
    inputs: Mapping[str, TensorSpec],
    outputs: Mapping[str, TensorSpec],
    signature_name: str = SIGNATURE_NAME,
    metadata: Mapping[str, Any] | None = None,
) -> int:
    """Move a fully written version from ``staged`` into place as the next version.

    The manifest is written into the staging folder last, then the folder is
    renamed to ``<repo>/<model>/<N>``; rename within one filesystem is atomic, so
    readers never see a partial version. Returns ``N``.
    """
    model_dir = repo / validate_model_name(model)
    if staged.parent.resolve() != model_dir.resolve():
        raise RepositoryError(f"{staged} must be a staging folder inside {model_dir}")
    for _attempt in range(100):
        version = max(list_versions(repo, model), default=0) + 1
        write_manifest(
            staged,
            model=model,
            version=version,
            inputs=inputs,
            outputs=outputs,
            signature_name=signature_name,
            metadata=metadata,
        )
        target = model_dir / str(version)
        try:
            # mkdir first: renaming a folder onto an existing *empty* folder would
            # silently replace it, so claim the number and then swap it in.
            target.mkdir()
        except FileExistsError:
            continue  # another publisher took this number; take the next one
        try:
            os.rename(staged, target)
        except OSError:
            target.rmdir()
            raise
        return version
    raise RepositoryError(f"could not claim a version number under {model_dir}")


def read_labels(repo: Path, model: str) -> dict[str, int]:
    path = repo / model / LABELS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise RepositoryError(f"{path} is unreadable: {exc}") from exc
    if not isinstance(data, dict):
        raise RepositoryError(f"{path} must hold a JSON object of label -> version")
    labels: dict[str, int] = {}
    for label, version in data.items():
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise RepositoryError(f"{path}: label {label!r} must map to a positive integer")
        labels[validate_label(label)] = version
    return labels


def write_labels(repo: Path, model: str, labels: Mapping[str, int]) -> None:
    model_dir = repo / validate_model_name(model)
    for label in labels:
        validate_label(label)
    _atomic_write_json(model_dir / LABELS_FILE, dict(sorted(labels.items())))


@contextlib.contextmanager
def _model_lock(repo: Path, model: str) -> Iterator[None]:
    """Serialise read-modify-write changes of one model's labels and versions."""
    import fcntl

    model_dir = repo / validate_model_name(model)
    if not model_dir.is_dir():
        raise RepositoryError(f"no model {model!r} in {repo}")
    with (model_dir / ".lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def set_label(repo: Path, model: str, label: str, version: int) -> int | None:
    """Point ``label`` at ``version`` (which must verify); returns the previous target."""
    validate_label(label)
    with _model_lock(repo, model):
        if version not in list_versions(repo, model):
            raise RepositoryError(f"model {model!r} has no version {version}")
        verify_version(repo / model / str(version))
        labels = read_labels(repo, model)
        previous = labels.get(label)
        labels[label] = version
        write_labels(repo, model, labels)
        return previous


def remove_label(repo: Path, model: str, label: str) -> int:
    """Remove ``label``; returns the version it pointed at."""
    with _model_lock(repo, model):
        labels = read_labels(repo, model)
        if label not in labels:
            raise RepositoryError(f"model {model!r} has no label {label!r}")
        version = labels.pop(label)
        write_labels(repo, model, labels)
        return version


def rollback(
    repo: Path, model: str, *, label: str = "stable", to: int | None = None
) -> tuple[int | None, int]:
    """Move ``label`` back: to version ``to``, or to the newest verified version below
    its current target (below the newest version when the label is unset).

    Returns ``(previous target, new target)``.
    """
    with _model_lock(repo, model):
        labels = read_labels(repo, model)
        current = labels.get(label)
        versions = list_versions(repo, model)
        if to is None:
            ceiling = current if current is not None else max(versions, default=0)
            for candidate in sorted((v for v in versions if v < ceiling), reverse=True):
                try:
                    verify_version(repo / model / str(candidate))
                except ManifestError:
                    continue
                to = candidate
                break
            else:
                raise RepositoryError(
                    f"no verified version of {model!r} older than {ceiling} to roll back to"
                )
        elif to not in versions:
            raise RepositoryError(f"model {model!r} has no version {to}")
        else:
            verify_version(repo / model / str(to))
        labels[label] = to
        write_labels(repo, model, labels)
        return current, to


def _remove_version_dir(repo: Path, model: str, version: int) -> None:
    """Make a version vanish atomically (rename away), then delete its files."""
    path = repo / model / str(version)
    trash = repo / model / f"{STAGING_PREFIX}removed-{version}-{os.getpid()}"
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def prune(repo: Path, model: str, keep: int) -> tuple[list[int], list[int]]:
    """Delete all but the newest ``keep`` versions, never one a label points at.

    Returns ``(removed, kept because labelled)``.
    """
    if keep < 1:
        raise RepositoryError(f"prune --keep must be >= 1, got {keep}")
    with _model_lock(repo, model):
        labelled = set(read_labels(repo, model).values())
        versions = list_versions(repo, model)
        old = versions[:-keep] if len(versions) > keep else []
        removed, spared = [], []
        for version in old:
            if version in labelled:
                spared.append(version)
                continue
            _remove_version_dir(repo, model, version)
            removed.append(version)
        return removed, spared


def remove_version(repo: Path, model: str, version: int) -> None:
    """Delete one version; refused while a label points at it."""
    with _model_lock(repo, model):
        if version not in list_versions(repo, model):
            raise RepositoryError(f"model {model!r} has no version {version}")
        pointing = sorted(k for k, v in read_labels(repo, model).items() if v == version)
        if pointing:
            raise RepositoryError(
                f"version {version} is labelled {', '.join(pointing)}; "
                "move or remove the label first"
            )
        _remove_version_dir(repo, model, version)


@dataclass(frozen=True)
class VersionInfo:
    """What ``digitserve-model list`` shows of a version."""

    version: int
    status: str  # "ok", "incomplete" (no manifest) or "corrupt: <reason>"
    labels: tuple[str, ...]
    test_accuracy: float | None
    created_at: str | None
    architecture: str | None


def describe(repo: Path, model: str, *, verify: bool = True) -> list[VersionInfo]:
    labels = read_labels(repo, model)
    out = []
    for version in list_versions(repo, model):
        path = repo / model / str(version)
        manifest: Manifest | None = None
        try:
            manifest = verify_version(path) if verify else read_manifest(path)
            status = "ok"
        except ManifestError as exc:
            status = "incomplete" if not (path / MANIFEST_FILE).exists() else f"corrupt: {exc}"
        meta = manifest.metadata if manifest else {}
        accuracy = meta.get("test_accuracy")
        out.append(
            VersionInfo(
                version=version,
                status=status,
                labels=tuple(sorted(k for k, v in labels.items() if v == version)),
                test_accuracy=float(accuracy) if isinstance(accuracy, int | float) else None,
                created_at=manifest.created_at if manifest else None,
                architecture=str(meta["architecture"]) if "architecture" in meta else None,
            )
        )
    return out


def import_version(source: Path, repo: Path, model: str) -> int:
    """Publish a copy of a version folder (from this or another repository) as the next
    version of ``model``. The source must verify against its manifest; the copy is
    written to a staging folder and renamed into place like any publication.
    """
    manifest = verify_version(source)
    with staging_dir(repo, model) as staged:
        for item in source.iterdir():
            if item.name == MANIFEST_FILE:
                continue
            if item.is_dir():
                shutil.copytree(item, staged / item.name)
            else:
                shutil.copy2(item, staged / item.name)
        return publish(
            staged,
            repo,
            model,
            inputs=manifest.inputs,
            outputs=manifest.outputs,
            signature_name=manifest.signature_name,
            metadata=manifest.metadata,
        )
