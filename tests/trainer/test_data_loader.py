"""The MNIST reader: IDX (gzipped or plain) and npz, and a clear DataError for each defect."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

from digitserve.trainer.data import (
    IDX_FILES,
    IMAGES_MAGIC,
    LABELS_MAGIC,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    DataError,
    load_mnist,
)


def idx_bytes(array: np.ndarray, magic: int, dims: tuple[int, ...] | None = None) -> bytes:
    dims = array.shape if dims is None else dims
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    return header + array.astype(np.uint8).tobytes()


def write(path: Path, content: bytes, gz: bool) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(content))
    else:
        path.write_bytes(content)
    return path


def make_set(folder: Path, *, n_train: int = 12, n_test: int = 5, gz: bool = True) -> dict:
    """Write a tiny but valid MNIST set; return the arrays written, by file name."""
    rng = np.random.default_rng(0)
    arrays = {
        TRAIN_IMAGES: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        TRAIN_LABELS: rng.integers(0, 10, n_train, dtype=np.uint8),
        TEST_IMAGES: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        TEST_LABELS: rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, array in arrays.items():
        magic = IMAGES_MAGIC if array.ndim == 3 else LABELS_MAGIC
        write(folder / name, idx_bytes(array, magic), gz)
    return arrays


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "plain"])
def test_reads_idx_files(tmp_path: Path, gz: bool) -> None:
    arrays = make_set(tmp_path, gz=gz)
    data = load_mnist(tmp_path)
    np.testing.assert_array_equal(data.train_images, arrays[TRAIN_IMAGES])
    np.testing.assert_array_equal(data.train_labels, arrays[TRAIN_LABELS])
    np.testing.assert_array_equal(data.test_images, arrays[TEST_IMAGES])
    np.testing.assert_array_equal(data.test_labels, arrays[TEST_LABELS])
    assert data.train_images.dtype == np.uint8
    suffix = ".gz" if gz else ""
    assert data.checksums == {
        name + suffix: hashlib.sha256((tmp_path / (name + suffix)).read_bytes()).hexdigest()
        for name in IDX_FILES
    }


def test_reads_keras_npz(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    arrays = {
        "x_train": rng.integers(0, 256, (8, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, 8, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, 3, dtype=np.uint8),
    }
    np.savez(tmp_path / "mnist.npz", **arrays)  # type: ignore[arg-type]
    data = load_mnist(tmp_path)
    np.testing.assert_array_equal(data.train_images, arrays["x_train"])
    np.testing.assert_array_equal(data.test_labels, arrays["y_test"])
    assert list(data.checksums) == ["mnist.npz"]


def test_npz_missing_array_is_an_error(tmp_path: Path) -> None:
    np.savez(tmp_path / "mnist.npz", x_train=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match=r"mnist\.npz: missing arrays y_train, x_test, y_test"):
        load_mnist(tmp_path)


def test_wrong_magic_number(tmp_path: Path) -> None:
    arrays = make_set(tmp_path)
    # A label file where an image file belongs.
    write(tmp_path / TRAIN_IMAGES, idx_bytes(arrays[TRAIN_LABELS], LABELS_MAGIC), gz=True)
    with pytest.raises(DataError, match=rf"{TRAIN_IMAGES}\.gz: wrong magic number 2049 "):
        load_mnist(tmp_path)


def test_truncated_file(tmp_path: Path) -> None:
    arrays = make_set(tmp_path)
    content = idx_bytes(arrays[TEST_IMAGES], IMAGES_MAGIC)
    write(tmp_path / TEST_IMAGES, content[:-100], gz=True)
    with pytest.raises(DataError, match=rf"{TEST_IMAGES}\.gz: truncated: .* file holds 3820"):
        load_mnist(tmp_path)


def test_truncated_header(tmp_path: Path) -> None:
    make_set(tmp_path, gz=False)
    (tmp_path / TRAIN_LABELS).write_bytes(LABELS_MAGIC.to_bytes(4, "big") + b"\x00\x00")
    with pytest.raises(DataError, match=rf"{TRAIN_LABELS}: file too short for an IDX header"):
        load_mnist(tmp_path)


def test_corrupt_gzip(tmp_path: Path) -> None:
    make_set(tmp_path)
    (tmp_path / f"{TEST_LABELS}.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=rf"{TEST_LABELS}\.gz: cannot read"):
        load_mnist(tmp_path)


def test_image_and_label_counts_must_match(tmp_path: Path) -> None:
    arrays = make_set(tmp_path)
    write(tmp_path / TRAIN_LABELS, idx_bytes(arrays[TRAIN_LABELS][:-1], LABELS_MAGIC), gz=True)
    with pytest.raises(DataError, match=r"holds 12 images but .* holds 11 labels"):
        load_mnist(tmp_path)


def test_image_size_must_be_28x28(tmp_path: Path) -> None:
    make_set(tmp_path)
    small = np.zeros((12, 27, 28), np.uint8)
    write(tmp_path / TRAIN_IMAGES, idx_bytes(small, IMAGES_MAGIC), gz=True)
    with pytest.raises(DataError, match=r"images are 27x28, expected 28x28"):
        load_mnist(tmp_path)


def test_labels_must_be_digits(tmp_path: Path) -> None:
    make_set(tmp_path)
    write(tmp_path / TEST_LABELS, idx_bytes(np.array([1, 2, 10, 3, 4]), LABELS_MAGIC), gz=True)
    with pytest.raises(DataError, match=r"label 10 is not a digit"):
        load_mnist(tmp_path)


def test_incomplete_idx_set(tmp_path: Path) -> None:
    make_set(tmp_path)
    (tmp_path / f"{TEST_LABELS}.gz").unlink()
    with pytest.raises(DataError, match=rf"missing: {TEST_LABELS}"):
        load_mnist(tmp_path)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"does not exist"):
        load_mnist(tmp_path / "nowhere")


def test_reads_the_real_data_set(mnist_dir: Path) -> None:
    data = load_mnist(mnist_dir)
    assert data.train_images.shape == (60000, 28, 28)
    assert data.test_images.shape == (10000, 28, 28)
    assert sorted(np.unique(data.test_labels)) == list(range(10))
    published = {}
    for line in (mnist_dir / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        published[name] = digest
    assert data.checksums == published
