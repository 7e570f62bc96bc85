"""The versions the server holds: loading, choosing, draining and unloading them.

The manager keeps the loaded versions in step with the model repository. Each
``refresh`` reads the repository, works out which versions should be served
(the model's version policy, plus every version a label points at), loads and
warms up new ones while the old ones keep serving, and only then drains and
unloads the versions that are no longer wanted. A version that fails to load is
marked FAILED with its reason and retried only when its files change.

Requests hold a *lease* on the version that serves them, so a version being
unloaded finishes the requests that started on it before its memory is released.

Labels take effect only once the version they point at is AVAILABLE: until then
a label keeps answering with the version it pointed at before.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from . import repository
from .batching import Batcher, BatchingConfig, BatchObserver
from .errors import ModelNotFound, ModelUnavailable
from .model import ModelRunner

log = logging.getLogger(__name__)

STABLE = "stable"


class State(enum.Enum):
    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    FAILED = "FAILED"


@dataclass(frozen=True)
class VersionPolicy:
    """Which published versions to serve: the newest ``latest``, ``all``, or ``specific``."""

    kind: str
    count: int = 1
    versions: frozenset[int] = frozenset()

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        text = text.strip()
        if text == "all":
            return cls("all")
        if m := re.fullmatch(r"latest(?::\s*(\d+))?", text):
            count = int(m.group(1) or 1)
            if count < 1:
                raise ValueError("version policy latest:N needs N >= 1")
            return cls("latest", count=count)
        if m := re.fullmatch(r"specific:\s*\[?\s*([\d\s,]+?)\s*\]?", text):
            versions = frozenset(int(v) for v in re.split(r"[\s,]+", m.group(1)) if v)
            if not versions or min(versions) < 1:
                raise ValueError("version policy specific:[...] needs positive version numbers")
            return cls("specific", versions=versions)
        raise ValueError(
            f"invalid version policy {text!r}: use 'latest:N', 'all' or 'specific:[1,2]'"
        )

    def select(self, versions: list[int]) -> set[int]:
        if self.kind == "all":
            return set(versions)
        if self.kind == "latest":
            return set(sorted(versions)[-self.count :])
        return set(self.versions) & set(versions)

    def __str__(self) -> str:
        if self.kind == "latest":
            return f"latest:{self.count}"
        if self.kind == "specific":
            return "specific:[" + ",".join(map(str, sorted(self.versions))) + "]"
        return "all"


class VersionObserver(Protocol):
    """Receives version life events (the metrics module implements it)."""

    def version_state(self, model: str, version: int, state: State | None) -> None: ...

    def load_finished(self, model: str, version: int, seconds: float) -> None: ...

    def load_failed(self, model: str, version: int, reason: str) -> None: ...

    def batch_observer(self, model: str, version: int) -> BatchObserver | None: ...


class RunnerFactory(Protocol):
    def __call__(self, path: Path) -> ModelRunner: ...


@dataclass(eq=False)
class ModelVersion:
    """One version the server knows of, whatever its state."""

    model: str
    version: int
    path: Path
    state: State
    fingerprint: tuple[Any, ...] = ()
    reason: str = ""
    manifest: repository.Manifest | None = None
    batcher: Batcher | None = None
    runner: ModelRunner | None = None
    leases: int = 0
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def metadata(self) -> Mapping[str, Any]:
        return self.manifest.metadata if self.manifest else {}


@dataclass
class _Model:
    name: str
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)  # as applied (targets AVAILABLE)
    wanted_labels: dict[str, int] = field(default_factory=dict)  # as in labels.json
    # Refreshed by choose_default() whenever versions or labels change.
    default_version: ModelVersion | None = None

    def available(self) -> list[ModelVersion]:
        return sorted(
            (v for v in self.versions.values() if v.state is State.AVAILABLE),
            key=lambda v: v.version,
        )

    def default(self) -> ModelVersion | None:
        """The version a request without version or label gets (checked on every request)."""
        cached = self.default_version
        if cached is not None and cached.state is State.AVAILABLE:
            return cached
        return self.choose_default()

    def choose_default(self) -> ModelVersion | None:
        """Work the default out again: ``stable`` if AVAILABLE, else the newest AVAILABLE."""
        stable = self.labels.get(STABLE)
        chosen = self.versions.get(stable) if stable is not None else None
        if chosen is None or chosen.state is not State.AVAILABLE:
            available = self.available()
            chosen = available[-1] if available else None
        self.default_version = chosen
        return chosen


@dataclass(frozen=True)
class ModelInfo:
    """A snapshot of one model for the status RPC."""

    name: str
    versions: list[ModelVersion]
    labels: dict[str, int]
    default_version: int


def _load_runner(path: Path) -> ModelRunner:
    from .model import SavedModelRunner

    return SavedModelRunner(path)


class ModelManager:
    """Keeps loaded versions in step with the repository and routes requests to them."""

    def __init__(
        self,
        repo: Path,
        batching: BatchingConfig,
        *,
        policy: VersionPolicy | None = None,
        model_policies: Mapping[str, VersionPolicy] | None = None,
        runner_factory: RunnerFactory = _load_runner,
        observer: VersionObserver | None = None,
        on_change: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._repo = repo
        self._batching = batching
        self._policy = policy or VersionPolicy("latest")
        self._model_policies = dict(model_policies or {})
        self._runner_factory = runner_factory
        self._observer = observer
        self._on_change = on_change
        self._models: dict[str, _Model] = {}
        self._refresh_lock = asyncio.Lock()
        self._unloads: set[asyncio.Task[None]] = set()
        self._scanned = False
        self._closed = False

    # -- routing ---------------------------------------------------------------

    def resolve(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> ModelVersion:
        """The AVAILABLE version a request should use, or a NOT_FOUND/UNAVAILABLE error."""
        model = self._models.get(name)
        if model is None:
            if not self._scanned:
                raise ModelUnavailable("the server is starting; no model is loaded yet")
            known = ", ".join(sorted(self._models)) or "none"
            raise ModelNotFound(f"unknown model {name!r} (known models: {known})")
        if version is not None:
            v = model.versions.get(version)
            if v is not None and v.state is State.AVAILABLE:
                return v
            if v is not None and v.state is State.LOADING:
                raise ModelUnavailable(f"model {name!r} version {version} is still loading")
            served = ", ".join(str(x.version) for x in model.available()) or "none"
            why = "" if v is None else f" ({v.state.value}{': ' + v.reason if v.reason else ''})"
            raise ModelNotFound(
                f"model {name!r} has no servable version {version}{why}; available: {served}"
            )
        if label is not None:
            target = model.labels.get(label)
            if target is None:
                wanted = model.wanted_labels.get(label)
                if wanted is not None and wanted in model.versions:
                    raise ModelUnavailable(
                        f"label {label!r} of model {name!r} points to version {wanted}, "
                        f"which is {model.versions[wanted].state.value}"
                    )
                labels = ", ".join(sorted(model.labels)) or "none"
                raise ModelNotFound(f"model {name!r} has no label {label!r} (labels: {labels})")
            return model.versions[target]
        v = model.default()
        if v is None:
            raise ModelUnavailable(f"model {name!r} has no available version yet")
        return v

    def acquire(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> ModelVersion:
        """Resolve and hold a version: it cannot unload until ``release`` is called."""
        v = self.resolve(name, version, label)
        v.leases += 1
        return v

    def release(self, v: ModelVersion) -> None:
        v.leases -= 1
        if v.leases == 0 and v.state is State.UNLOADING:
            v.drained.set()

    @contextlib.asynccontextmanager
    async def lease(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> AsyncIterator[ModelVersion]:
        """Hold the chosen version for the length of a request."""
        v = self.acquire(name, version, label)
        try:
            yield v
        finally:
            self.release(v)

    def knows(self, name: str) -> bool:
        """Whether the repository has a model of that name."""
        return name in self._models

    def is_serving(self, name: str) -> bool:
        model = self._models.get(name)
        return model is not None and model.default() is not None

    def snapshot(self, name: str | None = None) -> list[ModelInfo]:
        models = [self._models[name]] if name in self._models else []
        if name is None:
            models = [self._models[n] for n in sorted(self._models)]
        elif not models:
            raise ModelNotFound(f"unknown model {name!r}")
        out = []
        for m in models:
            default = m.default()
            out.append(
                ModelInfo(
                    name=m.name,
                    versions=sorted(m.versions.values(), key=lambda v: -v.version),
                    labels=dict(m.labels),
                    default_version=default.version if default else 0,
                )
            )
        return out

    # -- keeping in step with the repository -------------------------------------

    async def refresh(self) -> None:
        """Read the repository once and load, fail or unload versions to match it."""
        async with self._refresh_lock:
            if self._closed:
                return
            names = await asyncio.to_thread(repository.list_models, self._repo)
            for name in names:
                await self._refresh_model(self._models.setdefault(name, _Model(name)))
            for name in set(self._models) - set(names):
                await self._refresh_model(self._models[name], gone=True)
                if not self._models[name].versions:
                    del self._models[name]
            self._scanned = True
            await self._changed()

    async def _refresh_model(self, model: _Model, gone: bool = False) -> None:
        published: dict[int, tuple[Any, ...]] = {}
        labels: dict[str, int] = {}
        if not gone:
            published, labels = await asyncio.to_thread(self._scan, model.name)
        model.wanted_labels = labels

        # Versions that vanished from disk, or whose files changed, are dropped.
        for number, v in list(model.versions.items()):
            if v.state is State.UNLOADING:
                continue
            if number not in published:
                self._start_unload(model, v)
            elif v.state is State.FAILED and published[number] != v.fingerprint:
                del model.versions[number]  # files changed: try again
                self._emit(model.name, number, None)

        candidates = [
            n
            for n in published
            if not (n in model.versions and model.versions[n].state is State.FAILED)
        ]
        policy = self._model_policies.get(model.name, self._policy)
        wanted = policy.select(candidates) | {n for n in labels.values() if n in candidates}
        for number in sorted(wanted, reverse=True):
            if number not in model.versions:
                await self._load(model, number, published[number])

        self._apply_labels(model)
        # Only now that every wanted version is loaded (or failed) do others go.
        settled = {
            n
            for n in wanted
            if model.versions.get(n) and model.versions[n].state is State.AVAILABLE
        }
        if settled or not wanted:
            for number, v in list(model.versions.items()):
                if v.state is State.AVAILABLE and number not in wanted:
                    self._start_unload(model, v)
        self._apply_labels(model)

    def _scan(self, name: str) -> tuple[dict[int, tuple[Any, ...]], dict[str, int]]:
        published = {}
        for number in repository.list_versions(self._repo, name):
            path = self._repo / name / str(number)
            if not (path / repository.MANIFEST_FILE).exists():
                log.debug("model %s version %d has no manifest yet; ignored", name, number)
                continue
            published[number] = repository.fingerprint(path)
        try:
            labels = repository.read_labels(self._repo, name)
        except repository.RepositoryError as exc:
            log.error("ignoring labels of model %s: %s", name, exc)
            model = self._models.get(name)
            labels = dict(model.wanted_labels) if model else {}
        return published, labels

    def _apply_labels(self, model: _Model) -> None:
        applied = {}
        for label, target in model.wanted_labels.items():
            v = model.versions.get(target)
            if v is not None and v.state is State.AVAILABLE:
                applied[label] = target
                continue
            previous = model.labels.get(label)
            if previous is not None:
                old = model.versions.get(previous)
                if old is not None and old.state is State.AVAILABLE:
                    applied[label] = previous  # keep answering until the target is ready
        if applied != model.labels:
            log.info("model %s labels now %s", model.name, applied or "{}")
        model.labels = applied
        model.choose_default()

    async def _load(self, model: _Model, number: int, fingerprint: tuple[Any, ...]) -> None:
        path = self._repo / model.name / str(number)
        v = ModelVersion(model.name, number, path, State.LOADING, fingerprint=fingerprint)
        model.versions[number] = v
        self._emit(model.name, number, State.LOADING)
        await self._changed()
        log.info("loading model %s version %d from %s", model.name, number, path)
        started = time.perf_counter()
        try:
            manifest = await asyncio.to_thread(repository.verify_version, path)
            manifest.check_signature()
            v.manifest = manifest
            v.runner = await asyncio.to_thread(self._runner_factory, path)
            observer = self._observer.batch_observer(model.name, number) if self._observer else None
            v.batcher = Batcher(
                v.runner, self._batching, name=f"{model.name}:{number}", observer=observer
            )
            await v.batcher.warm_up()
            v.batcher.start()
        except Exception as exc:
            reason = _failure_reason(exc)
            log.error(
                "model %s version %d FAILED to load: %s",
                model.name,
                number,
                reason,
                exc_info=not isinstance(exc, repository.RepositoryError),
            )
            await self._release(v)
            v.state, v.reason = State.FAILED, reason
            self._emit(model.name, number, State.FAILED)
            if self._observer:
                self._observer.load_failed(model.name, number, _failure_kind(exc))
            return
        v.state = State.AVAILABLE
        seconds = time.perf_counter() - started
        log.info(
            "model %s version %d AVAILABLE (loaded and warmed up in %.2fs)",
            model.name,
            number,
            seconds,
        )
        self._emit(model.name, number, State.AVAILABLE)
        if self._observer:
            self._observer.load_finished(model.name, number, seconds)
        self._apply_labels(model)
        await self._changed()

    def _start_unload(self, model: _Model, v: ModelVersion) -> None:
        previous = v.state
        v.state = State.UNLOADING
        self._emit(model.name, v.version, State.UNLOADING)
        self._apply_labels(model)
        if previous is not State.AVAILABLE:
            model.versions.pop(v.version, None)
            self._emit(model.name, v.version, None)
            return
        log.info(
            "unloading model %s version %d (%d requests to drain)", model.name, v.version, v.leases
        )
        if v.leases == 0:
            v.drained.set()
        task = asyncio.create_task(self._finish_unload(model, v), name=f"unload-{v.version}")
        self._unloads.add(task)
        task.add_done_callback(self._unloads.discard)

    async def _finish_unload(self, model: _Model, v: ModelVersion) -> None:
        await v.drained.wait()
        await self._release(v)
        if model.versions.get(v.version) is v:
            del model.versions[v.version]
        self._emit(model.name, v.version, None)
        log.info("model %s version %d unloaded", model.name, v.version)
        await self._changed()

    async def _release(self, v: ModelVersion) -> None:
        if v.batcher is not None:
            await v.batcher.close()
            v.batcher = None
        runner, v.runner = v.runner, None
        close = getattr(runner, "close", None)
        if close is not None:
            await asyncio.to_thread(close)

    def _emit(self, model: str, version: int, state: State | None) -> None:
        if self._observer:
            self._observer.version_state(model, version, state)

    async def _changed(self) -> None:
        if self._on_change:
            await self._on_change()

    async def watch(self, interval: float, trigger: asyncio.Event | None = None) -> None:
        """Refresh every ``interval`` seconds, or at once when ``trigger`` is set."""
        trigger = trigger or asyncio.Event()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(trigger.wait(), interval)
            trigger.clear()
            try:
                await self.refresh()
            except Exception:
                log.exception("repository refresh failed; serving what is loaded")

    async def close(self) -> None:
        """Unload everything (after the transport has drained its requests)."""
        async with self._refresh_lock:
            self._closed = True
            for model in self._models.values():
                for v in list(model.versions.values()):
                    await self._release(v)
            for task in list(self._unloads):
                task.cancel()
            self._models.clear()


def _failure_kind(exc: Exception) -> str:
    """A bounded label for metrics."""
    if isinstance(exc, repository.ManifestError):
        text = str(exc)
        if "checksum" in text:
            return "checksum"
        if "signature" in text:
            return "signature"
        return "manifest"
    return "load_error"


def _failure_reason(exc: Exception) -> str:
    if isinstance(exc, repository.RepositoryError):
        return str(exc)
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
