"""Reading MNIST: IDX files (gzipped or plain), a Keras ``mnist.npz``, or Keras' download.

Every check a corrupt or mismatched file can fail raises :class:`DataError` naming the
file and what is wrong with it, and the SHA-256 of every source file is returned with the
arrays so that a trained model can say which data it was trained on.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
IMAGE_SIDE = 28
NUM_CLASSES = 10

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
IDX_FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
NPZ_FILE = "mnist.npz"
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


class DataError(Exception):
    """The data set cannot be read or is not a valid MNIST data set; the message says why."""


@dataclass(frozen=True)
class MnistData:
    """The MNIST training and test sets, as read, with where they came from."""

    train_images: np.ndarray
    """uint8 [N, 28, 28], 0 background, 255 full ink."""
    train_labels: np.ndarray
    """uint8 [N], digits 0-9."""
    test_images: np.ndarray
    test_labels: np.ndarray
    checksums: dict[str, str]
    """Source file name -> SHA-256 of the file as stored (compressed if it is)."""
    source: str
    """A one-line description of where the data was read from."""


def load_mnist(data_dir: Path | None) -> MnistData:
    """Read MNIST from ``data_dir``: the four IDX files, else ``mnist.npz``.

    When ``data_dir`` is None, or holds neither, Keras downloads the data set (that
    needs network access). A ``data_dir`` that does not exist is an error, not a
    reason to download.
    """
    if data_dir is None:
        return _load_keras_download()
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} does not exist or is not a directory")
    idx_paths = {name: _find_idx(data_dir, name) for name in IDX_FILES}
    found = {name: path for name, path in idx_paths.items() if path is not None}
    if len(found) == len(IDX_FILES):
        return _load_idx_set(data_dir, found)
    if found:
        missing = ", ".join(name for name in IDX_FILES if name not in found)
        raise DataError(f"{data_dir} holds only some of the MNIST IDX files; missing: {missing}")
    if (data_dir / NPZ_FILE).is_file():
        return load_npz(data_dir / NPZ_FILE)
    logger.info("no MNIST files in %s", data_dir)
    return _load_keras_download()


def _find_idx(data_dir: Path, name: str) -> Path | None:
    """The IDX file ``name`` in ``data_dir``, gzipped or plain (gzipped wins)."""
    for candidate in (data_dir / f"{name}.gz", data_dir / name):
        if candidate.is_file():
            return candidate
    return None


def _load_idx_set(data_dir: Path, paths: dict[str, Path]) -> MnistData:
    train_images = read_idx_images(paths[TRAIN_IMAGES])
    train_labels = read_idx_labels(paths[TRAIN_LABELS])
    test_images = read_idx_images(paths[TEST_IMAGES])
    test_labels = read_idx_labels(paths[TEST_LABELS])
    _check_pair(paths[TRAIN_IMAGES].name, train_images, paths[TRAIN_LABELS].name, train_labels)
    _check_pair(paths[TEST_IMAGES].name, test_images, paths[TEST_LABELS].name, test_labels)
    return MnistData(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        checksums={path.name: sha256_file(path) for path in paths.values()},
        source=f"IDX files in {data_dir}",
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_bytes(path: Path) -> bytes:
    """The content of ``path``, decompressed if its name ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from exc


def _parse_idx(path: Path, magic: int, ndim: int) -> tuple[tuple[int, ...], bytes]:
    """Check an IDX header and return the declared dimensions and the data bytes."""
    raw = _read_bytes(path)
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DataError(
            f"{path}: file too short for an IDX header ({len(raw)} bytes, need {header_size})"
        )
    found_magic = int.from_bytes(raw[0:4], "big")
    if found_magic != magic:
        # The third byte is the type (0x08 = uint8), the fourth the number of dimensions.
        raise DataError(
            f"{path}: wrong magic number {found_magic} (expected {magic}: "
            f"uint8 data with {ndim} dimension{'s' if ndim > 1 else ''})"
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims, dtype=np.int64))
    data = raw[header_size:]
    if len(data) < expected:
        raise DataError(
            f"{path}: truncated: header declares {' x '.join(map(str, dims))} "
            f"= {expected} bytes of data, file holds {len(data)}"
        )
    if len(data) > expected:
        raise DataError(
            f"{path}: {len(data) - expected} unexpected bytes after the "
            f"{' x '.join(map(str, dims))} data the header declares"
        )
    return dims, data


def read_idx_images(path: Path) -> np.ndarray:
    """Read an IDX3 image file (magic 2051) as uint8 [N, 28, 28]."""
    dims, data = _parse_idx(path, IMAGES_MAGIC, 3)
    if dims[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(
            f"{path}: images are {dims[1]}x{dims[2]}, expected {IMAGE_SIDE}x{IMAGE_SIDE}"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def read_idx_labels(path: Path) -> np.ndarray:
    """Read an IDX1 label file (magic 2049) as uint8 [N] of digits 0-9."""
    _dims, data = _parse_idx(path, LABELS_MAGIC, 1)
    labels = np.frombuffer(data, dtype=np.uint8)
    _check_label_values(str(path), labels)
    return labels


def _check_label_values(where: str, labels: np.ndarray) -> None:
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        raise DataError(f"{where}: label {int(labels.max())} is not a digit 0-9")


def _check_pair(images_name: str, images: np.ndarray, labels_name: str, labels: np.ndarray) -> None:
    if len(images) != len(labels):
        raise DataError(
            f"{images_name} holds {len(images)} images but {labels_name} holds {len(labels)} labels"
        )
    if len(images) == 0:
        raise DataError(f"{images_name} holds no images")


def load_npz(path: Path) -> MnistData:
    """Read a Keras-format ``mnist.npz`` (x_train, y_train, x_test, y_test)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [key for key in NPZ_KEYS if key not in npz.files]
            if missing:
                raise DataError(f"{path}: missing arrays {', '.join(missing)}")
            arrays = {key: npz[key] for key in NPZ_KEYS}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: cannot read as .npz: {exc}") from exc
    for key in ("x_train", "x_test"):
        shape = arrays[key].shape
        if arrays[key].ndim != 3 or shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
            raise DataError(
                f"{path}: {key} has shape {shape}, expected [N, {IMAGE_SIDE}, {IMAGE_SIDE}]"
            )
    for key in ("y_train", "y_test"):
        if arrays[key].ndim != 1:
            raise DataError(f"{path}: {key} has shape {arrays[key].shape}, expected [N]")
        if arrays[key].size and (arrays[key].min() < 0 or arrays[key].max() >= NUM_CLASSES):
            raise DataError(f"{path}: {key} holds values outside the digits 0-9")
    for key in NPZ_KEYS:
        if arrays[key].dtype != np.uint8:
            if key.startswith("x") and arrays[key].size and arrays[key].max() > 255:
                raise DataError(f"{path}: {key} holds values above 255")
            arrays[key] = arrays[key].astype(np.uint8)
    _check_pair(f"{path.name}:x_train", arrays["x_train"], "y_train", arrays["y_train"])
    _check_pair(f"{path.name}:x_test", arrays["x_test"], "y_test", arrays["y_test"])
    return MnistData(
        train_images=arrays["x_train"],
        train_labels=arrays["y_train"],
        test_images=arrays["x_test"],
        test_labels=arrays["y_test"],
        checksums={path.name: sha256_file(path)},
        source=f"{path}",
    )


def _load_keras_download() -> MnistData:
    """Keras' own copy of MNIST, downloaded into the Keras cache if not there yet."""
    import keras  # Only this fallback needs Keras; the readers above are plain numpy.

    cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets" / NPZ_FILE
    if not cache.is_file():
        logger.info("downloading MNIST with keras.datasets.mnist into %s", cache.parent)
    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    except Exception as exc:
        raise DataError(
            f"no MNIST files found and the Keras download failed ({exc}); "
            "set --data-dir / DIGITSERVE_DATA_DIR to a folder with the IDX files"
        ) from exc
    _check_pair("keras x_train", x_train, "y_train", y_train)
    _check_pair("keras x_test", x_test, "y_test", y_test)
    return MnistData(
        train_images=np.asarray(x_train, dtype=np.uint8),
        train_labels=np.asarray(y_train, dtype=np.uint8),
        test_images=np.asarray(x_test, dtype=np.uint8),
        test_labels=np.asarray(y_test, dtype=np.uint8),
        checksums={NPZ_FILE: sha256_file(cache)} if cache.is_file() else {},
        source="keras.datasets.mnist download",
    )
