"""Reading images from disk: RGB uint8 pixels, or just the size from the file header.

Decisions:
- Decoding is OpenCV's ``imdecode`` with ``IMREAD_COLOR_RGB``: it turns grayscale, palette,
  RGBA / LA (alpha dropped, not composited), CMYK and 16-bit images into RGB uint8 H x W x 3
  in one call.  Reading the bytes with ``numpy.fromfile`` keeps any path (non-ASCII too)
  working.
- EXIF orientation is ignored by default (``IMREAD_IGNORE_ORIENTATION``): annotations are taken
  to be in the stored pixel grid, as in PASCAL VOC, and ``image_size`` (PIL header, which also
  ignores it) must agree with ``load_image``.  Photos given to a trained model
  (``predict.py``, ``Detector.predict`` on a path) are read with ``exif_orientation=True``:
  turned as an image viewer shows them, so boxes and drawings match what the user sees.
- ``image_size`` reads only the header with PIL (lazy open, about 0.3 ms per JPEG), so a
  dataset's sizes can be checked without decoding every image.  Formats PIL cannot read
  fall back to a full decode.
- ``image_digest`` keys every cache entry made from an image (proposals, conv maps) by the
  image's bytes: the SHA-256 of the whole file, first 32 hex digits.  Measured here on a
  500 x 375 VOC-like JPEG of 100 KB: 0.13 ms to read and hash against 3.2 ms to decode it, so
  every file is hashed (no size+mtime shortcut that an in-place edit within the same second, or
  a copy keeping mtime, could fool).  The digest is kept in memory per path only while the
  file's size, mtime (ns) and inode are unchanged, so one run hashes each image once.
- A size limit before decoding: ``load_image`` and ``image_size`` read the header first and refuse
  an image over ``max_image_pixels()`` (100 MP unless ``SPPNET_MAX_IMAGE_PIXELS`` says otherwise;
  the tools' ``--max-image-pixels`` sets it), in the manner of Pillow's ``MAX_IMAGE_PIXELS`` and
  OpenCV's ``OPENCV_IO_MAX_IMAGE_PIXELS``: a 30000 x 30000 PNG would otherwise take 2.7 GB to
  decode, whatever its file size.  Pillow reads the header (its own, fixed bomb check is set
  aside for that read: this one replaces it).
- What the decoders print: libpng and libjpeg write their complaints ("libpng error: Not enough
  image data") straight to the process's stderr, out of Python's reach.  ``load_image`` sends
  file descriptor 2 to a temporary file for the decode and puts what was written in the
  ``ImageReadError``'s one line when the decode fails (dropped when it succeeds).
- ``MIN_IMAGE_SIDE`` / ``MAX_ASPECT``: an image is usable by a trunk when it can be resized to a
  short side of at least 32 px (the largest total stride of the registered trunks, so their
  conv5 map has at least one cell) with its long side within 2000 px (the default
  ``max_side``): long / short <= 2000 / 32 = 62.5.  A 2000 x 8 image (ratio 250) is refused by
  the loader; 8 x 8 (upscaled) and 2000 x 100 (ratio 20) are kept.
"""
from __future__ import annotations

import hashlib
import io
import os
import sys
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")  # the files datasets and predict.py read
MIN_IMAGE_SIDE = 32  # px of the short side after resizing, see the module notes
MAX_ASPECT = 2000 / MIN_IMAGE_SIDE  # long side / short side
_DECODE_FLAGS = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
MAX_PIXELS_VARIABLE = "SPPNET_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 100_000_000


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


def max_image_pixels() -> int:
    """The pixel limit (module notes): ``$SPPNET_MAX_IMAGE_PIXELS``, else 100 million."""
    value = os.environ.get(MAX_PIXELS_VARIABLE, "").strip()
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(float(value))
    except ValueError:
        limit = 0
    if limit < 1:
        raise ValueError(f"{MAX_PIXELS_VARIABLE}={value!r} is not a positive number of pixels")
    return limit


def _header_size(source: str | Path | io.BytesIO) -> tuple[int, int] | None:
    """``(width, height)`` from an image's header by Pillow, None when Pillow cannot parse it."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # max_image_pixels() is the check; Pillow's fixed one would refuse first
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(source) as image:
                return image.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def check_pixels(path: Path, width: int, height: int) -> None:
    """Refuse an image over ``max_image_pixels()`` in one line naming the file and the limit."""
    limit = max_image_pixels()
    if width * height > limit:
        raise ImageReadError(path, f"{width}x{height} is {_megapixels(width * height)}, over the limit of "
                                   f"{_megapixels(limit)} (raise it with --max-image-pixels or {MAX_PIXELS_VARIABLE})")


def _megapixels(pixels: int) -> str:
    """``pixels`` in MP to 3 significant digits, never as an exponent: 900 MP, 0.14 MP, 1600 MP."""
    return np.format_float_positional(pixels / 1e6, precision=3, fractional=False, trim="-") + " MP"


@contextmanager
def _stderr_captured() -> Iterator[list[str]]:
    """Send file descriptor 2 to a temporary file inside the block; what was written is appended
    to the yielded list at its end (module notes)."""
    written: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield written
            finally:
                os.dup2(saved, 2)
                sink.seek(0)
                written.append(" ".join(sink.read().decode("utf-8", "replace").split()))
    finally:
        os.close(saved)


def load_image(path: str | Path, exif_orientation: bool = False) -> np.ndarray:
    """Decode an image file to RGB uint8 H x W x 3 (see the module notes on conversions), in the
    stored pixel grid or, with ``exif_orientation``, turned by its EXIF orientation as viewers do;
    an image over the pixel limit is refused from its header, before decoding."""
    path = Path(path)
    data = _read_bytes(path)
    size = _header_size(io.BytesIO(data))
    if size is not None:
        check_pixels(path, *size)
    flags = cv2.IMREAD_COLOR_RGB if exif_orientation else _DECODE_FLAGS
    with _stderr_captured() as printed:
        try:
            image = cv2.imdecode(data, flags)
        except cv2.error as error:
            image, failure = None, f"decoder error: {' '.join(str(error).split())}"
        else:
            failure = "not a decodable image (unknown format, truncated or corrupt)"
    if image is None:
        raise ImageReadError(path, failure + (f": {printed[0]}" if printed and printed[0] else ""))
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageReadError(path, f"decoded to an unusable array of shape {image.shape}")
    return image


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image from its header, decoding only if PIL cannot parse it; an
    image over the pixel limit is refused."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "no such file" if not path.exists() else "not a regular file")
    size = _header_size(path)
    if size is None:
        height, width = load_image(path).shape[:2]
    else:
        width, height = size
    if width <= 0 or height <= 0:
        raise ImageReadError(path, f"header gives an empty size {width}x{height}")
    check_pixels(path, width, height)
    return int(width), int(height)


_DIGESTS: dict[str, tuple[tuple[int, int, int], str]] = {}


def image_digest(path: str | Path) -> str:
    """SHA-256 (32 hex digits) of an image file's bytes, memoised per (size, mtime, inode)."""
    path = Path(path)
    try:
        info = os.stat(path)
    except OSError as error:
        raise ImageReadError(path, str(error)) from error
    stamp = (info.st_size, info.st_mtime_ns, info.st_ino)
    known = _DIGESTS.get(str(path))
    if known is not None and known[0] == stamp:
        return known[1]
    digest = hashlib.sha256(_read_bytes(path).tobytes()).hexdigest()[:32]
    _DIGESTS[str(path)] = (stamp, digest)
    return digest


def unusable_shape(width: int, height: int) -> str | None:
    """Why no trunk can take an image of this size (see ``MAX_ASPECT``), or None."""
    if min(width, height) < 1:
        return f"empty size {width}x{height}"
    if max(width, height) / min(width, height) > MAX_ASPECT:
        return (f"{width}x{height} is too elongated (long/short side > {MAX_ASPECT:g}: its short side "
                f"cannot reach {MIN_IMAGE_SIDE} px with the long side within 2000 px)")
    return None
