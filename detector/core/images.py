"""Reading images from disk: RGB uint8 pixels, or just the size from the file header.

Decisions:
- Decoding is OpenCV's ``imdecode`` with ``IMREAD_COLOR_RGB``: it turns grayscale, palette,
  RGBA / LA (alpha dropped, not composited), CMYK and 16-bit images into RGB uint8 H x W x 3
  in one call.  Reading the bytes with ``numpy.fromfile`` keeps any path (non-ASCII too)
  working.
- EXIF orientation is ignored (``IMREAD_IGNORE_ORIENTATION``): annotations are taken to be
  in the stored pixel grid, as in PASCAL VOC, and ``image_size`` (PIL header, which also
  ignores it) must agree with ``load_image``.
- ``image_size`` reads only the header with PIL (lazy open, about 0.3 ms per JPEG), so a
  dataset's sizes can be checked without decoding every image.  Formats PIL cannot read
  fall back to a full decode.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

_DECODE_FLAGS = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION


class ImageReadError(Exception):
    """An image file is missing, empty or cannot be decoded; the message names the file."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"cannot read image {path}: {reason}")
        self.path = Path(path)
        self.reason = reason


def _read_bytes(path: Path) -> np.ndarray:
    """The file's bytes, or ImageReadError when it is missing, not a file or empty."""
    if not path.is_file():
        raise ImageReadError(path, "no such file" if not path.exists() else "not a regular file")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise ImageReadError(path, str(error)) from error
    if data.size == 0:
        raise ImageReadError(path, "file is empty")
    return data


def load_image(path: str | Path) -> np.ndarray:
    """Decode an image file to RGB uint8 H x W x 3 (see the module notes on conversions)."""
    path = Path(path)
    data = _read_bytes(path)
    try:
        image = cv2.imdecode(data, _DECODE_FLAGS)
    except cv2.error as error:
        raise ImageReadError(path, f"decoder error: {error}") from error
    if image is None:
        raise ImageReadError(path, "not a decodable image (unknown format, truncated or corrupt)")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageReadError(path, f"decoded to an unusable array of shape {image.shape}")
    return image


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image from its header, decoding only if PIL cannot parse it."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "no such file" if not path.exists() else "not a regular file")
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, ValueError):
        height, width = load_image(path).shape[:2]
    if width <= 0 or height <= 0:
        raise ImageReadError(path, f"header gives an empty size {width}x{height}")
    return int(width), int(height)
