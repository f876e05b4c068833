"""Selective search proposals (Uijlings et al.) with OpenCV contrib's ``ximgproc.segmentation``.

``selective_search(image_rgb)`` returns float32 (M, 4) continuous boxes (see
``detector.core.boxes``) in the coordinates of the image it was given, best-ranked first.

Decisions:
- Search size: the search runs on the image resized (``INTER_AREA``) so its longest side is
  ``max_side`` (500): its cost grows faster than the pixel count, and VOC images are at most
  500 px anyway.  Images are never upscaled, except tiny ones (longest side under
  ``MIN_SEARCH_SIDE`` = 32 px), which are enlarged to that size so the segmentation has
  something to work on.  Boxes are mapped back by the exact per-axis scale factors and
  clipped to the image.
- Modes (``MODES``): ``"fast"`` (default) is ``FAST``, tuned for recall per second;
  ``"quality"`` is OpenCV's ``switchToSelectiveSearchQuality`` as it comes;
  ``"opencv-fast"`` is OpenCV's ``switchToSelectiveSearchFast`` as it comes (reference).
- Why ``FAST`` is HSV + Lab + gray, k = 100, strategies texture+size+fill, size, fill:
  tuned on VOC2007 ``dev_train`` images (never ``dev_val``), recall of GT boxes at IoU 0.5
  with single-core CPU seconds per image, at max_side 500.  The colour similarity costs
  the most and added the least; the size-only and fill-only strategies are nearly free
  (they reuse the segmentation) and add diverse boxes; a third colour space (gray) adds
  more than a second k.  On 120 held-out dev_train images: this config 0.956 recall with
  1712 boxes in 0.41 s; OpenCV's fast mode as it comes 0.922 with 1410 boxes in 1.33 s.
  On 60 other dev_train images the original fast mode (HSV + Lab, k = 50 and 100,
  colour+texture+size+fill and texture+size+fill) gave 0.950 with 3137 boxes in 1.9 s.  Similar recall with more boxes
  (HSV + Lab, k = 50 and 300, size+fill and size: 0.960, 2500 boxes) was passed over:
  every proposal costs later in pooling and the fc layers.
- Tiny boxes: a box narrower or lower than ``min_box_size`` = 10 original pixels is dropped.
  Fewer than 0.2% of VOC2007 objects have a side under 10 px, such a window covers less
  than one cell of a stride-16 conv map at the smaller scales, and these boxes are a large
  share of the raw output.  The original code used 20 px, which loses recall on small
  objects (about 5% of VOC objects have a side under 20 px).  The threshold never exceeds
  the image's own width or height, so a tiny image keeps its whole-image box.
- Duplicates: boxes identical after rounding to whole pixels are kept once (the first).
- Ranking: OpenCV's order is kept (it ranks a region by ``rand() * level``, as the paper
  does, low first).  It draws from the C library's ``rand()``, so the C generator is
  seeded (``seed``) before each search to make the output reproducible.
- Threads: OpenCV's own threading is not used here; callers that parallelise over images
  with processes set ``cv2.setNumThreads(1)`` in each worker.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import logging
from dataclasses import dataclass

import cv2
import numpy as np

from detector.core.boxes import clip_boxes
from proposals.config import MODES

log = logging.getLogger(__name__)

MIN_SEARCH_SIDE = 32
DEFAULT_MIN_BOX_SIZE = 10.0

_COLOUR_SPACES = {
    "hsv": lambda bgr: cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV),
    "lab": lambda bgr: cv2.cvtColor(bgr, cv2.COLOR_BGR2Lab),
    "gray": lambda bgr: cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY),
}
_STRATEGY_FACTORIES = {  # looked up at call time: importing needs no OpenCV contrib (cached proposals)
    "colour": "createSelectiveSearchSegmentationStrategyColor",
    "texture": "createSelectiveSearchSegmentationStrategyTexture",
    "size": "createSelectiveSearchSegmentationStrategySize",
    "fill": "createSelectiveSearchSegmentationStrategyFill",
}


@dataclass(frozen=True)
class SearchConfig:
    """One hand-assembled selective search: every (colour space, k, strategy) triple is run.

    ``colour_spaces`` are names from ``hsv``, ``lab``, ``gray``; ``ks`` are the
    Felzenszwalb-Huttenlocher thresholds, each used with ``min_size = k``
    (as in the original code); ``strategies`` are tuples of similarity names from
    ``colour``, ``texture``, ``size``, ``fill`` (combined by OpenCV's "multiple" strategy).
    """

    colour_spaces: tuple[str, ...]
    ks: tuple[int, ...]
    strategies: tuple[tuple[str, ...], ...]
    sigma: float = 0.8


FAST = SearchConfig(
    colour_spaces=("hsv", "lab", "gray"),
    ks=(100,),
    strategies=(("texture", "size", "fill"), ("size",), ("fill",)),
)


def search_signature(mode: str) -> str:
    """Short digest of everything that fixes ``mode``'s output, for naming caches of it."""
    if mode not in MODES:
        raise ValueError(f"unknown selective search mode {mode!r}; expected one of {MODES}")
    settings = (mode, FAST if mode == "fast" else None, DEFAULT_MIN_BOX_SIZE, MIN_SEARCH_SIDE)
    return hashlib.sha1(repr(settings).encode()).hexdigest()[:8]


@functools.cache
def _c_library() -> ctypes.CDLL | None:
    """The C library OpenCV's ``rand()`` comes from, or None when it cannot be found."""
    name = ctypes.util.find_library("c") or ctypes.util.find_library("msvcrt")
    if name is None:
        log.warning("C library not found; selective search ranking is not reproducible")
        return None
    return ctypes.CDLL(name)


def _seed_c_rand(seed: int) -> None:
    """Seed the C library's ``rand()``, which OpenCV uses to rank regions."""
    library = _c_library()
    if library is not None:
        library.srand(ctypes.c_uint(seed))


def _search_image(image_rgb: np.ndarray, max_side: int) -> np.ndarray:
    """The image at the size the search runs on (longest side ``max_side``; tiny ones enlarged)."""
    height, width = image_rgb.shape[:2]
    longest = max(height, width)
    target = max_side if longest > max_side else max(longest, MIN_SEARCH_SIDE)
    if target == longest:
        return image_rgb
    scale = target / longest
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image_rgb, size, interpolation=interpolation)


def _configured_search(image_bgr: np.ndarray, mode: str) -> cv2.ximgproc.segmentation.SelectiveSearchSegmentation:
    """An OpenCV selective search object set up for ``mode`` on ``image_bgr``."""
    if not hasattr(cv2, "ximgproc"):
        raise RuntimeError(
            f"selective search needs OpenCV's contrib modules (cv2.ximgproc), missing from OpenCV "
            f"{cv2.__version__} at {cv2.__file__}: install opencv-contrib-python (and uninstall "
            f"opencv-python and opencv-python-headless, which shadow it), or give proposals made "
            f"elsewhere (--proposals)")
    segmentation = cv2.ximgproc.segmentation
    search = segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(image_bgr)
    if mode == "quality":
        search.switchToSelectiveSearchQuality()
        return search
    if mode == "opencv-fast":
        search.switchToSelectiveSearchFast()
        return search
    for colour in FAST.colour_spaces:
        search.addImage(_COLOUR_SPACES[colour](image_bgr))
    for k in FAST.ks:
        search.addGraphSegmentation(segmentation.createGraphSegmentation(FAST.sigma, float(k), int(k)))
    for names in FAST.strategies:
        parts = [getattr(segmentation, _STRATEGY_FACTORIES[name])() for name in names]
        search.addStrategy(segmentation.createSelectiveSearchSegmentationStrategyMultiple(*parts))
    return search


def _checked_rgb(image_rgb: np.ndarray) -> np.ndarray:
    """The image as contiguous uint8 H x W x 3 (a 2-D grayscale image is replicated)."""
    image = np.asarray(image_rgb)
    if image.dtype != np.uint8:
        raise ValueError(f"selective search needs a uint8 image, got dtype {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"selective search needs an H x W x 3 image, got shape {image.shape}")
    return np.ascontiguousarray(image)


def unique_rounded(boxes: np.ndarray) -> np.ndarray:
    """``boxes`` without those equal to an earlier one after rounding to whole pixels (order kept)."""
    if len(boxes) == 0:
        return boxes
    _, first = np.unique(np.round(boxes), axis=0, return_index=True)
    return boxes[np.sort(first)]


def selective_search(
    image_rgb: np.ndarray,
    mode: str = "fast",
    max_side: int = 500,
    min_box_size: float = DEFAULT_MIN_BOX_SIZE,
    seed: int = 0,
) -> np.ndarray:
    """Selective search boxes of an RGB uint8 image: float32 (M, 4), original coordinates, ranked.

    See the module docstring for the search size, modes, filtering and ranking.
    """
    if mode not in MODES:
        raise ValueError(f"unknown selective search mode {mode!r}; expected one of {MODES}")
    if max_side < MIN_SEARCH_SIDE:
        raise ValueError(f"max_side must be at least {MIN_SEARCH_SIDE}, got {max_side}")
    image = _checked_rgb(image_rgb)
    height, width = image.shape[:2]
    small = _search_image(image, max_side)
    search = _configured_search(cv2.cvtColor(small, cv2.COLOR_RGB2BGR), mode)
    _seed_c_rand(seed)
    rects = np.asarray(search.process(), dtype=np.float32).reshape(-1, 4)
    scale = np.array([width / small.shape[1], height / small.shape[0]] * 2, dtype=np.float32)
    boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1) * scale
    boxes = clip_boxes(boxes, width, height)
    keep = ((boxes[:, 2] - boxes[:, 0] >= min(min_box_size, width))
            & (boxes[:, 3] - boxes[:, 1] >= min(min_box_size, height)))
    return unique_rounded(boxes[keep])
