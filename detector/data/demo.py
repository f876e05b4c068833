"""An embedded demo dataset: coloured shapes on cluttered backgrounds, in VOC layout.

It lets the whole pipeline run and be checked end to end without any downloaded data.
The same reader (``detector.data.voc.load_voc``) serves it as any VOC dataset.

Content (every choice drawn from a seeded numpy generator, one stream per image):
- images 320..480 x 240..360 pixels, each side drawn independently;
- background: a linear gradient between two greyish colours, Gaussian luminance noise,
  3-9 thin lines and 4-15 small blobs (radius <= 7 px, far below the smallest object)
  that are not objects;
- 1-4 objects from ``DEMO_CLASSES``; the first object of image k is class k mod 6, so
  every class is present in any split of 6 or more images and classes stay balanced;
- longer side 40-200 px (log-uniform), stretch 0.5-2 (shorter side at least 28 px);
  polygon shapes are rotated by up to 15 degrees before being stretched to fill their
  box, so every box is tight;
- vivid colours (HSV saturation and value >= 0.55; the main hues of one image at least
  0.12 apart, so overlapping objects stay distinguishable) textured solid, stripes,
  checker, dots or noise (periods capped by the object's size), drawn with anti-aliasing
  at sub-pixel precision;
- an object may be covered by later ones up to 30% of its box (box union, which
  over-estimates the pixels covered); the recorded box is always the full one; boxes lie
  inside the image; every ``difficult`` flag is 0.

Layout: ``JPEGImages/<split>_<k>.jpg`` (quality 95), ``Annotations/<id>.xml``,
``ImageSets/Main/{train,test}.txt`` and ``manifest.json`` (format, version, parameters,
counts), written last.

Reuse and atomicity: ``make_demo_dataset`` returns an existing dataset whose manifest
matches (format, ``DEMO_VERSION``, parameters) and whose image and annotation counts are
right; otherwise it builds into a temporary folder beside the target and ``os.replace``s it
into place, so a killed build never leaves a folder that looks complete.  It only ever
replaces an empty folder or an earlier demo dataset, never other data.  Bump
``DEMO_VERSION`` whenever the generator's output changes.  Output bytes are identical
across runs for the same parameters and the same numpy / OpenCV versions.
"""
from __future__ import annotations

import colorsys
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from detector.data.voc import write_voc_annotation

log = logging.getLogger(__name__)

DEMO_CLASSES = ["circle", "square", "triangle", "star", "cross", "ring"]
DEMO_VERSION = 1
MANIFEST_NAME = "manifest.json"
_FORMAT = "sppnet-demo-voc"
_SPLIT_CODES = {"train": 0, "test": 1}
_SHIFT = 4  # sub-pixel bits for OpenCV drawing
_SCALE = 1 << _SHIFT
_MAX_OCCLUDED = 0.3
_MIN_HUE_GAP = 0.12
_STALE_TEMP_S = 600.0
_TEXTURES = ("solid", "stripes", "checker", "dots", "noise")


@dataclass(frozen=True)
class DemoObject:
    """One drawn object: class name and its tight box in continuous pixel coordinates."""

    name: str
    box: tuple[int, int, int, int]


def default_demo_root() -> Path:
    """``$SPPNET_CACHE`` (default ``~/.cache/sppnet``) / ``demo_voc``."""
    return Path(os.environ.get("SPPNET_CACHE", "~/.cache/sppnet")).expanduser() / "demo_voc"


def _distinct_hue(rng: np.random.Generator, taken: list[float]) -> float:
    """A hue (0..1) at least ``_MIN_HUE_GAP`` around the circle from every taken one, if possible."""
    hue = float(rng.uniform(0, 1))
    for _ in range(20):
        if all(min(abs(hue - t), 1 - abs(hue - t)) >= _MIN_HUE_GAP for t in taken):
            break
        hue = float(rng.uniform(0, 1))
    return hue


def _vivid_colour(rng: np.random.Generator, hue: float) -> np.ndarray:
    """A saturated, fairly bright RGB colour of the given hue (float32, 0..255)."""
    saturation, value = rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0)
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value), dtype=np.float32) * 255


def _grey_colour(rng: np.random.Generator) -> np.ndarray:
    """A weakly saturated background colour (float32, 0..255)."""
    hue, saturation, value = rng.uniform(0, 1), rng.uniform(0.0, 0.25), rng.uniform(0.3, 0.9)
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value), dtype=np.float32) * 255


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Gradient + noise + thin lines + small blobs, RGB float32 H x W x 3."""
    start, end = _grey_colour(rng), _grey_colour(rng)
    angle = rng.uniform(0, 2 * np.pi)
    xs = np.arange(width, dtype=np.float32) * np.float32(np.cos(angle))
    ys = np.arange(height, dtype=np.float32) * np.float32(np.sin(angle))
    ramp = ys[:, None] + xs[None, :]
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0)
    image = start + ramp[..., None] * (end - start)
    image += rng.standard_normal((height, width, 1), dtype=np.float32) * np.float32(rng.uniform(3, 10))
    canvas = np.clip(image, 0, 255).astype(np.uint8)
    for _ in range(rng.integers(3, 10)):
        p1 = tuple(int(v) for v in rng.integers(0, (width, height)))
        p2 = tuple(int(v) for v in rng.integers(0, (width, height)))
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        cv2.line(canvas, p1, p2, colour, int(rng.integers(1, 3)), cv2.LINE_AA)
    for _ in range(rng.integers(4, 16)):
        centre = tuple(int(v) for v in rng.integers(0, (width, height)))
        axes = tuple(int(v) for v in rng.integers(2, 8, 2))
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        cv2.ellipse(canvas, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
    return canvas.astype(np.float32)


def _texture(rng: np.random.Generator, width: int, height: int, hue: float) -> np.ndarray:
    """A textured fill of the given main hue for an object's box, RGB float32 H x W x 3.

    Pattern periods are capped at a quarter of the shorter side so that a small object
    still shows its outline rather than one or two texture cells.
    """
    first = _vivid_colour(rng, hue)
    second = first * rng.uniform(0.3, 0.55) if rng.uniform() < 0.5 else _vivid_colour(rng, rng.uniform(0, 1))
    largest_period = max(4.0, min(width, height) / 4)
    kind = _TEXTURES[rng.integers(len(_TEXTURES))]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == "solid":
        pattern = np.zeros((height, width), np.float32)
    elif kind == "stripes":
        angle, period = rng.uniform(0, np.pi), min(rng.uniform(6, 14), largest_period)
        phase = (xs * np.cos(angle) + ys * np.sin(angle)) / period
        pattern = (phase - np.floor(phase) < 0.5).astype(np.float32)
    elif kind == "checker":
        cell = int(min(rng.integers(5, 13), largest_period))
        pattern = ((xs // cell + ys // cell) % 2).astype(np.float32)
    elif kind == "dots":
        spacing = min(rng.uniform(8, 14), max(largest_period, 6.0))
        dx = (xs % spacing) - spacing / 2
        dy = (ys % spacing) - spacing / 2
        pattern = (dx * dx + dy * dy < (0.3 * spacing) ** 2).astype(np.float32)
    else:
        noise = rng.standard_normal((height, width), dtype=np.float32)
        pattern = np.clip(cv2.GaussianBlur(noise, (3, 3), 0) * 0.5 + 0.5, 0, 1)
    return first + pattern[..., None] * (second - first)


def _unit_polygon(name: str, rng: np.random.Generator) -> np.ndarray:
    """Vertices (K x 2) of a polygon class around the origin, randomly rotated a little."""
    if name == "square":
        points = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64)
    elif name == "triangle":
        angles = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        points = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    elif name == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        points = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    elif name == "cross":
        a = 0.32  # half the arm thickness
        points = np.array(
            [[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a],
             [a, 1], [-a, 1], [-a, a], [-1, a], [-1, -a], [-a, -a]],
            np.float64,
        )
    else:
        raise ValueError(f"no polygon for class {name!r}")
    theta = np.deg2rad(rng.uniform(-15, 15))
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return points @ rotation.T


def _shape_mask(name: str, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Anti-aliased coverage (float32 0..1, H x W) of a shape filling a ``width`` x ``height`` box.

    Continuous coordinate c is OpenCV coordinate c - 0.5 (OpenCV puts pixel centres on
    integers), so a shape spanning [0, width] touches exactly the box's edge pixels.
    """
    mask = np.zeros((height, width), np.uint8)

    def fixed(value: np.ndarray) -> np.ndarray:
        return np.round((value - 0.5) * _SCALE).astype(np.int32)

    if name in ("circle", "ring"):
        centre = tuple(int(v) for v in fixed(np.array([width / 2, height / 2])))
        axes = tuple(int(v) for v in np.round(np.array([width / 2, height / 2]) * _SCALE))
        cv2.ellipse(mask, centre, axes, 0, 0, 360, 255, -1, cv2.LINE_AA, _SHIFT)
        if name == "ring":
            hole = rng.uniform(0.45, 0.62)
            inner = tuple(int(v) for v in np.round(np.array([width / 2, height / 2]) * hole * _SCALE))
            cv2.ellipse(mask, centre, inner, 0, 0, 360, 0, -1, cv2.LINE_AA, _SHIFT)
    else:
        points = _unit_polygon(name, rng)
        low, high = points.min(axis=0), points.max(axis=0)
        points = (points - low) / (high - low) * np.array([width, height])
        cv2.fillPoly(mask, [fixed(points)], 255, cv2.LINE_AA, _SHIFT)
    return mask.astype(np.float32) / 255


def _occlusion_ok(boxes: list[tuple[int, int, int, int]], candidate: tuple[int, int, int, int]) -> bool:
    """Whether every earlier box stays at most 30% covered by the later ones plus ``candidate``."""
    later = boxes + [candidate]
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        covered = np.zeros((y2 - y1, x2 - x1), bool)
        for bx1, by1, bx2, by2 in later[i + 1 :]:
            covered[max(by1 - y1, 0) : max(by2 - y1, 0), max(bx1 - x1, 0) : max(bx2 - x1, 0)] = True
        if covered.mean() > _MAX_OCCLUDED:
            return False
    return True


def _object_size(rng: np.random.Generator, width: int, height: int) -> tuple[int, int]:
    """Box size: longer side 40-200 px log-uniform, stretch 0.5-2, shorter side >= 28 px."""
    longer = float(np.exp(rng.uniform(np.log(40), np.log(200))))
    stretch = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    shorter = max(28.0, longer / max(stretch, 1 / stretch))
    w, h = (longer, shorter) if stretch >= 1 else (shorter, longer)
    return int(min(round(w), width - 2)), int(min(round(h), height - 2))


def render_demo_image(rng: np.random.Generator, first_class: int) -> tuple[np.ndarray, list[DemoObject]]:
    """One demo image (RGB uint8) and its objects; ``first_class`` indexes the first object's class."""
    width, height = int(rng.integers(320, 481)), int(rng.integers(240, 361))
    image = _background(rng, width, height)
    objects: list[DemoObject] = []
    hues: list[float] = []
    for number in range(int(rng.integers(1, 5))):
        class_id = first_class if number == 0 else int(rng.integers(len(DEMO_CLASSES)))
        name = DEMO_CLASSES[class_id]
        w, h = _object_size(rng, width, height)
        for _ in range(30):
            x1, y1 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            box = (x1, y1, x1 + w, y1 + h)
            if _occlusion_ok([o.box for o in objects], box):
                break
        else:
            continue
        alpha = _shape_mask(name, rng, w, h)[..., None]
        region = image[y1 : y1 + h, x1 : x1 + w]
        hue = _distinct_hue(rng, hues)
        region[:] = region * (1 - alpha) + _texture(rng, w, h, hue) * alpha
        objects.append(DemoObject(name, box))
        hues.append(hue)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), objects


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """An independent stream per image, so an image does not depend on the split sizes."""
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODES[split], index]))


def _manifest(n_train: int, n_test: int, seed: int) -> dict:
    """The identity of a demo dataset: what must match for it to be reused."""
    return {
        "format": _FORMAT,
        "version": DEMO_VERSION,
        "params": {"n_train": n_train, "n_test": n_test, "seed": seed},
    }


def _read_manifest(root: Path) -> dict | None:
    """The manifest of a demo dataset folder, None when absent or broken."""
    try:
        manifest = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _is_complete(root: Path, n_train: int, n_test: int, seed: int) -> bool:
    """Whether ``root`` holds a finished demo dataset built with these parameters."""
    manifest = _read_manifest(root)
    if manifest is None or any(manifest.get(k) != v for k, v in _manifest(n_train, n_test, seed).items()):
        return False
    expected = n_train + n_test
    return all(
        (root / folder).is_dir() and sum(1 for _ in (root / folder).iterdir()) == expected
        for folder in ("JPEGImages", "Annotations")
    )


def _write_dataset(folder: Path, n_train: int, n_test: int, seed: int) -> dict[str, dict[str, int]]:
    """Render and write every image, annotation and split file into ``folder``; return counts."""
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    counts: dict[str, dict[str, int]] = {}
    for split, size in (("train", n_train), ("test", n_test)):
        ids = [f"{split}_{index:05d}" for index in range(size)]
        per_class = dict.fromkeys(DEMO_CLASSES, 0)
        progress = tqdm(ids, desc=f"demo {split}", unit="img", leave=False, disable=None)
        for index, image_id in enumerate(progress):
            image, objects = render_demo_image(_image_rng(seed, split, index), index % len(DEMO_CLASSES))
            bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
            ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
            if not ok:
                raise RuntimeError(f"JPEG encoding failed for demo image {image_id}")
            (folder / "JPEGImages" / f"{image_id}.jpg").write_bytes(encoded.tobytes())
            voc_objects = [(o.name, (o.box[0] + 1, o.box[1] + 1, o.box[2], o.box[3]), False) for o in objects]
            write_voc_annotation(
                folder / "Annotations" / f"{image_id}.xml", image_id, f"{image_id}.jpg",
                image.shape[1], image.shape[0], voc_objects,
            )
            for o in objects:
                per_class[o.name] += 1
        split_text = "".join(f"{image_id}\n" for image_id in ids)
        (folder / "ImageSets" / "Main" / f"{split}.txt").write_text(split_text, encoding="utf-8")
        counts[split] = {"images": size, "objects": sum(per_class.values()), **per_class}
    return counts


def _remove_stale_builds(parent: Path, name: str) -> None:
    """Delete temporary build folders left by killed builds (older than 10 minutes)."""
    for stale in parent.glob(f".{name}.build-*"):
        if time.time() - stale.stat().st_mtime > _STALE_TEMP_S:
            shutil.rmtree(stale, ignore_errors=True)


def make_demo_dataset(root: Path | None = None, n_train: int = 240, n_test: int = 120, seed: int = 0) -> Path:
    """Build (or reuse) the demo dataset at ``root`` (default ``default_demo_root()``); return its path."""
    if n_train < 1 or n_test < 1:
        raise ValueError(f"demo dataset needs images in both splits, got n_train={n_train}, n_test={n_test}")
    root = Path(root).expanduser() if root is not None else default_demo_root()
    if _is_complete(root, n_train, n_test, seed):
        log.info("reusing demo dataset %s", root)
        return root
    ours = (_read_manifest(root) or {}).get("format") == _FORMAT
    if root.exists() and not (root.is_dir() and (ours or not any(root.iterdir()))):
        raise FileExistsError(f"{root} exists and is not a demo dataset; refusing to replace it")

    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(root.parent, root.name)
    started = time.perf_counter()
    build = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.build-"))
    try:
        counts = _write_dataset(build, n_train, n_test, seed)
        manifest = {**_manifest(n_train, n_test, seed), "classes": DEMO_CLASSES, "counts": counts}
        (build / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        build.chmod(0o755)
        if _is_complete(root, n_train, n_test, seed):  # another process finished first
            shutil.rmtree(build)
            return root
        if root.exists():
            retired = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.build-old-"))
            os.replace(root, retired)
            shutil.rmtree(retired, ignore_errors=True)
        os.replace(build, root)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    log.info("built demo dataset %s in %.1f s: %s", root, time.perf_counter() - started, counts)
    return root
