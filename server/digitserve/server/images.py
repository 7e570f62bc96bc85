"""Turning request images into the model's input: 28x28 uint8, light ink on black.

Raw pixels are taken as they are. Encoded PNG/JPEG images of any size go through
the MNIST preparation: grayscale; dark ink on a light background is inverted;
the background level is removed; the image is cropped to the ink, scaled to fit
20x20 keeping its aspect ratio, and placed in a 28x28 frame so that the ink's
centre of mass sits at the centre.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InvalidInput

SIDE = 28
PIXELS = SIDE * SIDE
FIT = 20
MAX_SIDE = 4096
ALLOWED_FORMATS = frozenset({"PNG", "JPEG"})
# Where MNIST digits have their centre of mass, in pixel index coordinates (the
# mean over the training set is 14.0 on both axes, not the geometric 13.5).
CENTRE = 14.0
# Share of the ink's peak below which a pixel counts as background noise.
INK_THRESHOLD = 0.05


def from_pixels(data: bytes) -> np.ndarray:
    """A raw 784-byte image as a 28x28 uint8 array (no copy)."""
    if len(data) != PIXELS:
        raise InvalidInput(
            f"raw pixels must be exactly {PIXELS} bytes (28x28 uint8, row-major), got {len(data)}"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(SIDE, SIDE)


def from_encoded(data: bytes, *, max_bytes: int) -> np.ndarray:
    """Decode a PNG or JPEG image and prepare it the MNIST way."""
    if not data:
        raise InvalidInput("encoded image is empty; send PNG or JPEG bytes")
    if len(data) > max_bytes:
        raise InvalidInput(
            f"encoded image is {len(data)} bytes; at most {max_bytes} bytes are allowed"
        )
    gray = _decode_gray(data)
    return mnist_normalize(gray)


def _decode_gray(data: bytes) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.format not in ALLOWED_FORMATS:
                    raise InvalidInput(f"unsupported image format {img.format}; send PNG or JPEG")
                width, height = img.size
                if width > MAX_SIDE or height > MAX_SIDE:
                    raise InvalidInput(
                        f"image is {width}x{height} pixels; at most {MAX_SIDE} on either side"
                    )
                if width < 1 or height < 1:
                    raise InvalidInput("image has no pixels")
                img.load()
                return _to_gray(img)
    except InvalidInput:
        raise
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        raise InvalidInput(
            "image could not be decoded as PNG or JPEG (corrupt or truncated data)"
        ) from exc


def _to_gray(img: Image.Image) -> np.ndarray:
    """Grayscale float array in [0, 255]; transparency is laid over white paper."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(paper, rgba)
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(img, dtype=np.float64)
        peak = arr.max()
        return arr * (255.0 / peak) if peak > 255 else arr
    return np.asarray(img.convert("L"), dtype=np.float64)


def mnist_normalize(gray: np.ndarray) -> np.ndarray:
    """Prepare a grayscale image (any size, values 0-255) as a 28x28 MNIST digit."""
    border = np.concatenate([gray[0, :], gray[-1, :], gray[:, 0], gray[:, -1]])
    background = float(np.median(border))
    if background > 127.5:
        gray = 255.0 - gray  # dark ink on light paper -> light ink on dark
        background = 255.0 - background
    ink = np.clip(gray - background, 0.0, None)
    peak = float(ink.max())
    if peak < 16.0:
        raise InvalidInput("image holds no visible ink (blank or nearly uniform)")
    ink *= 255.0 / peak
    rows = np.flatnonzero((ink > INK_THRESHOLD * 255.0).any(axis=1))
    cols = np.flatnonzero((ink > INK_THRESHOLD * 255.0).any(axis=0))
    ink = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]

    height, width = ink.shape
    scale = FIT / max(height, width)
    new_w = max(1, round(width * scale))
    new_h = max(1, round(height * scale))
    resized = Image.fromarray(ink.astype(np.float32)).resize(
        (new_w, new_h), Image.Resampling.LANCZOS
    )
    digit = np.clip(np.asarray(resized, dtype=np.float64), 0.0, 255.0)

    frame = np.zeros((SIDE, SIDE), dtype=np.float64)
    top, left = (SIDE - new_h) // 2, (SIDE - new_w) // 2
    frame[top : top + new_h, left : left + new_w] = digit
    frame = _center_of_mass_shift(frame, top, left, new_h, new_w)
    return np.rint(frame).astype(np.uint8)


def _center_of_mass_shift(
    frame: np.ndarray, top: int, left: int, height: int, width: int
) -> np.ndarray:
    total = frame.sum()
    if total <= 0:
        return frame
    ys, xs = np.indices(frame.shape)
    cy = float((ys * frame).sum() / total)
    cx = float((xs * frame).sum() / total)
    # Shift so the centre of mass lands at the centre, but never push ink out.
    dy = int(np.clip(round(CENTRE - cy), -top, SIDE - (top + height)))
    dx = int(np.clip(round(CENTRE - cx), -left, SIDE - (left + width)))
    return np.roll(frame, (dy, dx), axis=(0, 1))
