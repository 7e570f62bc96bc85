"""Turning what a caller holds (arrays, Pillow images, files, bytes) into ``Image`` messages.

Two wire forms exist (see ``digitserve.proto``):

* ``pixels``: exactly 784 bytes, a 28x28 uint8 image already in MNIST form
  (light ink on a dark background, centred). The server feeds them to the
  model as they are.
* ``encoded``: a PNG or JPEG of any size. The server does the MNIST
  preprocessing (grayscale, inversion of dark-on-light ink, crop, scale,
  centring).

So a 28x28 array or 28x28 grayscale Pillow image is taken to be MNIST-ready
and sent as pixels; anything else that is an image is PNG-encoded (or sent as
the file's own bytes) and left to the server's preprocessing.
"""

from __future__ import annotations

import io
import os
from typing import TypeAlias

import numpy as np
from PIL import Image as PILImage

from digitserve.v1 import digitserve_pb2

__all__ = [
    "MNIST_SIDE",
    "ImageInput",
    "to_image",
]

#: Side of the images the model takes, in pixels.
MNIST_SIDE = 28

#: Everything ``to_image`` accepts.
ImageInput: TypeAlias = (
    np.ndarray
    | PILImage.Image
    | str
    | os.PathLike[str]
    | bytes
    | bytearray
    | memoryview
    | digitserve_pb2.Image
)

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
# Pillow modes a PNG can hold as they are.
_PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I;16"})
# Colour modes that become RGB before encoding.
_COLOUR_MODES = frozenset({"CMYK", "YCbCr", "LAB", "HSV", "PA", "La", "RGBa", "RGBX"})

_ACCEPTED = (
    "a numpy array, a PIL.Image.Image, a file path (str or os.PathLike), "
    "PNG/JPEG bytes, or a digitserve.v1.Image"
)


def to_image(value: ImageInput) -> digitserve_pb2.Image:
    """The ``Image`` message for one input.

    * numpy array: 28x28 (or 28x28x1) is sent as raw pixels; any other size
      (HxW grayscale or HxWx3/4 RGB/RGBA) is PNG-encoded. The dtype must be
      uint8, another integer type with values in 0..255, or a float type with
      values in [0, 1] (scaled by 255 and rounded).
    * ``PIL.Image.Image``: 28x28 in mode ``L`` is sent as raw pixels; any
      other size or mode is PNG-encoded.
    * ``str`` / ``os.PathLike``: the file's bytes, which must be PNG or JPEG.
    * ``bytes`` / ``bytearray`` / ``memoryview``: a PNG or JPEG image.
    * ``digitserve.v1.Image``: passed through.

    Raises ``TypeError`` for other types or dtypes, ``ValueError`` for wrong
    shapes, out-of-range values or bytes that are not PNG/JPEG, and
    ``OSError`` when a file cannot be read.
    """
    if isinstance(value, digitserve_pb2.Image):
        if value.WhichOneof("data") is None:
            raise ValueError("the digitserve.v1.Image has neither pixels nor encoded set")
        return value
    if isinstance(value, np.ndarray):
        return _from_array(value)
    if isinstance(value, PILImage.Image):
        return _from_pil(value)
    if isinstance(value, str | os.PathLike):
        return _from_file(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return _from_encoded(bytes(value), source="the image bytes")
    raise TypeError(f"cannot classify a {type(value).__name__}: expected {_ACCEPTED}")


def _from_array(array: np.ndarray) -> digitserve_pb2.Image:
    pixels = _as_uint8(array)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim == 2 and pixels.shape == (MNIST_SIDE, MNIST_SIDE):
        return digitserve_pb2.Image(pixels=np.ascontiguousarray(pixels).tobytes())
    if not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] in (3, 4))):
        raise ValueError(
            f"cannot classify an array of shape {array.shape}: expected (28, 28) raw MNIST "
            "pixels, or an image of any size shaped (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)"
        )
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ValueError(f"cannot classify an empty array of shape {array.shape}")
    # Pillow reads the mode from the shape: (H, W) is L, (H, W, 3) RGB, (H, W, 4) RGBA.
    image = PILImage.fromarray(np.ascontiguousarray(pixels))
    return digitserve_pb2.Image(encoded=_png_bytes(image))


def _as_uint8(array: np.ndarray) -> np.ndarray:
    """The array as uint8 pixels; floats in [0, 1] are scaled, other integers range-checked."""
    dtype = array.dtype
    if dtype == np.uint8:
        return array
    if dtype == np.bool_ or not np.issubdtype(dtype, np.number):
        raise TypeError(_dtype_message(dtype))
    if np.issubdtype(dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError(
                f"integer pixels must be in 0..255, got values from {array.min()} to {array.max()}"
            )
        return array.astype(np.uint8)
    if np.issubdtype(dtype, np.floating):
        if array.size and not np.isfinite(array).all():
            raise ValueError("float pixels must be finite numbers in [0, 1], got NaN or inf")
        if array.size and (array.min() < 0.0 or array.max() > 1.0):
            raise ValueError(
                f"float pixels must be in [0, 1], got values from {array.min():g} to "
                f"{array.max():g} (divide 0..255 values by 255, or pass them as uint8)"
            )
        return np.rint(array * 255.0).astype(np.uint8)
    raise TypeError(_dtype_message(dtype))


def _dtype_message(dtype: np.dtype) -> str:
    return (
        f"cannot classify an array of dtype {dtype}: expected uint8 (or another integer "
        "type) with values in 0..255, or a float type with values in [0, 1]"
    )


def _from_pil(image: PILImage.Image) -> digitserve_pb2.Image:
    if image.mode == "L" and image.size == (MNIST_SIDE, MNIST_SIDE):
        return digitserve_pb2.Image(pixels=image.tobytes())
    if image.width == 0 or image.height == 0:
        raise ValueError(f"cannot classify an empty image of size {image.size}")
    if image.mode in _COLOUR_MODES:
        image = image.convert("RGBA" if "A" in image.mode or "a" in image.mode else "RGB")
    elif image.mode not in _PNG_MODES:
        raise ValueError(
            f"cannot classify a PIL image in mode {image.mode!r}: its value range is not "
            "known; convert it to mode 'L' (0 = background, 255 = ink) or pass a numpy array"
        )
    return digitserve_pb2.Image(encoded=_png_bytes(image))


def _png_bytes(image: PILImage.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _from_file(path: str | os.PathLike[str]) -> digitserve_pb2.Image:
    with open(path, "rb") as file:
        data = file.read()
    return _from_encoded(data, source=f"file {os.fspath(path)!r}")


def _from_encoded(data: bytes, *, source: str) -> digitserve_pb2.Image:
    if not (data.startswith(_PNG_MAGIC) or data.startswith(_JPEG_MAGIC)):
        raise ValueError(
            f"{source} is not a PNG or JPEG image: encoded images must be PNG or JPEG; "
            "open other formats with PIL.Image.open and pass the image, and pass raw "
            "28x28 pixels as a uint8 numpy array"
        )
    return digitserve_pb2.Image(encoded=data)
