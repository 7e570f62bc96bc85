"""Every accepted input kind becomes the right Image message; others fail clearly."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from digitserve.client import to_image
from digitserve.v1 import digitserve_pb2


def digit_pixels() -> np.ndarray:
    """A 28x28 uint8 image with distinct values, so any reordering would show."""
    return (np.arange(28 * 28, dtype=np.uint32) % 251).astype(np.uint8).reshape(28, 28)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def decode(image: digitserve_pb2.Image) -> PILImage.Image:
    assert image.WhichOneof("data") == "encoded"
    decoded = PILImage.open(io.BytesIO(image.encoded))
    assert decoded.format == "PNG"
    return decoded


# numpy arrays


def test_uint8_28x28_array_is_sent_as_raw_pixels_in_row_major_order() -> None:
    array = digit_pixels()
    image = to_image(array)
    assert image.WhichOneof("data") == "pixels"
    assert image.pixels == array.tobytes()
    assert len(image.pixels) == 784


def test_non_contiguous_array_is_sent_in_its_logical_order() -> None:
    array = digit_pixels().T
    assert not array.flags.c_contiguous
    assert to_image(array).pixels == np.ascontiguousarray(array).tobytes()


def test_28x28x1_array_is_sent_as_raw_pixels() -> None:
    array = digit_pixels()
    assert to_image(array[:, :, np.newaxis]).pixels == array.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_float_array_in_unit_range_is_scaled_to_uint8(dtype: type) -> None:
    array: np.ndarray = np.zeros((28, 28), dtype=dtype)
    array[0, 0] = 1.0
    array[0, 1] = 0.2
    array[0, 2] = 0.5
    pixels = np.frombuffer(to_image(array).pixels, dtype=np.uint8).reshape(28, 28)
    assert pixels[0, 0] == 255
    assert pixels[0, 1] == 51
    assert pixels[0, 2] in (127, 128)
    assert pixels[1:].max() == 0


def test_float_array_outside_unit_range_is_rejected_with_the_allowed_range() -> None:
    array = np.full((28, 28), 255.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_image(array)


def test_float_array_with_nan_is_rejected() -> None:
    array = np.zeros((28, 28), dtype=np.float32)
    array[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        to_image(array)


def test_integer_array_in_byte_range_is_accepted() -> None:
    array = digit_pixels().astype(np.int64)
    assert to_image(array).pixels == array.astype(np.uint8).tobytes()


def test_integer_array_outside_byte_range_is_rejected() -> None:
    array = np.zeros((28, 28), dtype=np.int32)
    array[0, 0] = 300
    with pytest.raises(ValueError, match=r"0\.\.255"):
        to_image(array)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((28, 28), dtype=bool),
        np.zeros((28, 28), dtype=np.complex64),
        np.full((28, 28), "x", dtype=object),
    ],
    ids=["bool", "complex", "object"],
)
def test_arrays_of_other_dtypes_are_rejected_naming_the_allowed_dtypes(
    array: np.ndarray,
) -> None:
    with pytest.raises(TypeError, match="uint8"):
        to_image(array)


def test_grayscale_array_of_another_size_is_png_encoded_losslessly() -> None:
    array = np.random.default_rng(1).integers(0, 256, size=(40, 30), dtype=np.uint8)
    decoded = decode(to_image(array))
    assert decoded.mode == "L"
    assert np.array_equal(np.asarray(decoded), array)


@pytest.mark.parametrize(("channels", "mode"), [(3, "RGB"), (4, "RGBA")])
def test_colour_array_is_png_encoded_in_its_mode(channels: int, mode: str) -> None:
    array = np.random.default_rng(2).integers(0, 256, size=(28, 28, channels), dtype=np.uint8)
    decoded = decode(to_image(array))
    assert decoded.mode == mode
    assert np.array_equal(np.asarray(decoded), array)


def test_float_array_of_another_size_is_scaled_then_png_encoded() -> None:
    array = np.ones((10, 12), dtype=np.float32)
    assert np.asarray(decode(to_image(array))).min() == 255


@pytest.mark.parametrize(
    "shape", [(784,), (28, 28, 2), (1, 28, 28, 1), (0, 28)], ids=["flat", "2ch", "4d", "empty"]
)
def test_arrays_of_other_shapes_are_rejected_saying_what_is_allowed(
    shape: tuple[int, ...],
) -> None:
    with pytest.raises(ValueError, match=r"shape") as info:
        to_image(np.zeros(shape, dtype=np.uint8))
    assert str(shape) in str(info.value)


# Pillow images


def test_28x28_grayscale_pil_image_is_sent_as_raw_pixels() -> None:
    array = digit_pixels()
    image = to_image(PILImage.fromarray(array))
    assert image.WhichOneof("data") == "pixels"
    assert image.pixels == array.tobytes()


def test_pil_image_of_another_size_is_png_encoded() -> None:
    array = np.random.default_rng(3).integers(0, 256, size=(64, 48), dtype=np.uint8)
    decoded = decode(to_image(PILImage.fromarray(array)))
    assert np.array_equal(np.asarray(decoded), array)


def test_28x28_colour_pil_image_is_png_encoded_not_sent_as_pixels() -> None:
    image = PILImage.new("RGB", (28, 28), (10, 20, 30))
    decoded = decode(to_image(image))
    assert decoded.mode == "RGB"
    assert decoded.getpixel((0, 0)) == (10, 20, 30)


def test_cmyk_pil_image_is_converted_to_rgb_and_encoded() -> None:
    decoded = decode(to_image(PILImage.new("CMYK", (30, 30))))
    assert decoded.mode == "RGB"


@pytest.mark.parametrize("mode", ["F", "I"])
def test_pil_image_without_a_known_value_range_is_rejected(mode: str) -> None:
    with pytest.raises(ValueError, match="mode 'L'"):
        to_image(PILImage.new(mode, (28, 28)))


# Files and bytes


def test_file_path_sends_the_file_bytes_as_encoded(tmp_path: Path) -> None:
    data = png(digit_pixels())
    path = tmp_path / "seven.png"
    path.write_bytes(data)
    assert to_image(path) == digitserve_pb2.Image(encoded=data)
    assert to_image(str(path)) == digitserve_pb2.Image(encoded=data)


def test_jpeg_file_is_sent_as_encoded(tmp_path: Path) -> None:
    path = tmp_path / "two.jpg"
    PILImage.fromarray(digit_pixels()).save(path, format="JPEG")
    assert to_image(path).encoded == path.read_bytes()


def test_28x28_png_file_is_sent_encoded_for_server_preprocessing(tmp_path: Path) -> None:
    path = tmp_path / "small.png"
    path.write_bytes(png(digit_pixels()))
    assert to_image(path).WhichOneof("data") == "encoded"


def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        to_image(tmp_path / "missing.png")


def test_file_that_is_not_png_or_jpeg_is_rejected_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "digit.bmp"
    PILImage.fromarray(digit_pixels()).save(path, format="BMP")
    with pytest.raises(ValueError, match="PNG or JPEG") as info:
        to_image(path)
    assert "digit.bmp" in str(info.value)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_png_bytes_are_sent_as_encoded(kind: type) -> None:
    data = png(digit_pixels())
    assert to_image(kind(data)) == digitserve_pb2.Image(encoded=data)


def test_raw_pixel_bytes_are_rejected_pointing_at_numpy_arrays() -> None:
    with pytest.raises(ValueError, match="numpy array"):
        to_image(digit_pixels().tobytes())


# Messages and other types


def test_image_message_is_passed_through() -> None:
    message = digitserve_pb2.Image(pixels=bytes(784))
    assert to_image(message) is message


def test_empty_image_message_is_rejected() -> None:
    with pytest.raises(ValueError, match="neither"):
        to_image(digitserve_pb2.Image())


@pytest.mark.parametrize("value", [7, [[0] * 28] * 28, None], ids=["int", "list", "None"])
def test_other_types_are_rejected_listing_what_is_accepted(value: object) -> None:
    with pytest.raises(TypeError, match="numpy array") as info:
        to_image(value)  # type: ignore[arg-type]
    assert type(value).__name__ in str(info.value)
