"""Boxes drawn on images: detections with class names and scores, and detections judged
against ground truth (true positive, false positive, missed ground truth).

Decisions:
- OpenCV draws (``cv2.rectangle``, ``cv2.putText`` with ``LINE_AA``); images are RGB uint8 in
  and out, written through ``cv2.imencode`` and ``detector.core.io`` (atomic).
- One colour per class from ``PALETTE``, a fixed list (class k takes entry k mod its length),
  so a class has the same colour in every picture of a model.  The colours are saturated (no
  cream, mint or grey, which faded into photos), and every box line has a thin edge on both
  sides: dark around a light colour, light around a dark one (``edge_colour``: purple, maroon
  and navy lines were faint on dark backgrounds with a dark edge), so it stands out anywhere.
- Labels ("name 0.93") sit on a box of the class colour filled solid, the text black or white
  by the colour's luminance, so they read on any image.  Only the ``MAX_LABELS`` best-scored
  detections of an image are labelled; the others are boxes alone (at low thresholds labels
  covered up to a third of a small photo).  ``place_labels`` puts each, best score first, next to
  its own box where none covers another (as detectron2's Visualizer moves overlapping labels):
  above the box's top-left corner, else just inside it, else below the box, else stacked down
  inside it, then the same right-aligned, always within the image; when every such place is
  taken the label goes to the one of them it overlaps least, never away from its box.
- Line width and font size grow with the image (``_style``): at least 2 pixels, about 1/250 and 1/600 of the short
  side, so a label stays legible on a 300-pixel demo image and on a 4000-pixel photo.
- Missed ground truth is drawn dashed: OpenCV has no dashed rectangle, so ``_dashed_rectangle``
  draws short segments (a few dozen ``cv2.line`` calls per box).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from detector.core.io import write_bytes_atomic

# Distinct saturated colours (RGB), readable as box outlines on photos; 20 entries for VOC (person, the
# most frequent class, vermilion: apart from the greens, pinks and blues of the classes seen with it).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (255, 80, 160), (0, 128, 128), (120, 90, 255), (170, 110, 40),
    (255, 200, 0), (128, 0, 0), (255, 60, 0), (128, 128, 0), (255, 120, 90), (0, 0, 160),
    (0, 190, 255), (255, 235, 0),
)
EDGE_COLOUR = (20, 20, 20)  # the thin edge around a light box line
LIGHT_EDGE_COLOUR = (245, 245, 245)  # the thin edge around a dark box line
MAX_LABELS = 8  # detections labelled per image, the best-scored; the others are drawn as boxes alone
TP_COLOUR = (40, 200, 40)
FP_COLOUR = (230, 30, 30)
MISSED_COLOUR = (255, 220, 0)
IGNORED_COLOUR = (160, 160, 160)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_colour(label: int) -> tuple[int, int, int]:
    """The fixed colour of class index ``label``."""
    return PALETTE[int(label) % len(PALETTE)]


def _style(image: np.ndarray) -> tuple[int, float]:
    """Line thickness and font scale for an image of this size."""
    short = min(image.shape[:2])
    return max(2, round(short / 250)), max(0.4, short / 600)


def _luma(colour: Sequence[int]) -> float:
    """ITU-R BT.601 luma of an RGB colour, 0-255."""
    return 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]


def _text_colour(colour: Sequence[int]) -> tuple[int, int, int]:
    """Black on light colours, white on dark ones."""
    return (0, 0, 0) if _luma(colour) > 140 else (255, 255, 255)


def edge_colour(colour: Sequence[int]) -> tuple[int, int, int]:
    """The edge drawn around a box line of ``colour``: light around a dark line, dark around a light one."""
    return LIGHT_EDGE_COLOUR if _luma(colour) < 100 else EDGE_COLOUR


def _label_size(image: np.ndarray, text: str) -> tuple[int, int, float, int]:
    """Width and height of a label box with its padding, the font scale and thickness."""
    thickness, scale = _style(image)
    font_thickness = max(1, thickness - 1) if scale < 1 else thickness
    (width, height), baseline = cv2.getTextSize(text, _FONT, scale, font_thickness)
    pad = max(2, thickness // 2 + 1)
    return width + 2 * pad, height + baseline + 2 * pad, scale, font_thickness


def _overlap(a: Sequence[int], b: Sequence[int]) -> int:
    """Area shared by two (x0, y0, x1, y1) rectangles (x1, y1 exclusive)."""
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def place_labels(sizes: Sequence[tuple[int, int]], boxes: np.ndarray, height: int,
                 width: int) -> list[tuple[int, int]]:
    """Top-left corners for labels of ``sizes`` (width, height) on ``boxes`` (x1 y1 x2 y2), in the
    given order (best first): each next to its own box, where it covers no label placed before it
    if there is such a place (module notes)."""
    placed: list[tuple[int, int, int, int]] = []
    corners = []
    for (w, h), box in zip(sizes, np.asarray(boxes, np.float64).reshape(-1, 4)):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        step = max(1, h // 2)
        rows = [y1 - h, y1, y2, y2 - h] + list(range(y1 + h, max(y2 - h, y1 + h) + 1, step))
        candidates = []
        for x0 in (x1, x2 - w):  # left- or right-aligned with the box
            x0 = int(np.clip(x0, 0, max(width - w, 0)))
            for y0 in rows:
                y0 = int(np.clip(y0, 0, max(height - h, 0)))
                rect = (x0, y0, x0 + w, y0 + h)
                candidates.append((sum(_overlap(rect, other) for other in placed), rect))
                if candidates[-1][0] == 0:
                    break
            if candidates[-1][0] == 0:
                break
        rect = min(candidates, key=lambda c: c[0])[1]  # the first free place, else the least covered
        placed.append(rect)
        corners.append(rect[:2])
    return corners


def draw_label(image: np.ndarray, text: str, x: float, y: float, colour: Sequence[int],
               inside: bool = False, at: tuple[int, int] | None = None) -> None:
    """Write ``text`` on a filled box of ``colour`` just above (x, y), or below it when ``inside``
    or when there is no room above; always within the image (``at``: its top-left corner, as
    ``place_labels`` chose it)."""
    box_width, box_height, scale, font_thickness = _label_size(image, text)
    pad = max(2, _style(image)[0] // 2 + 1)
    if at is not None:
        x0, y0 = at
    else:
        x0 = int(np.clip(x, 0, max(image.shape[1] - box_width, 0)))
        y0 = int(y) if inside else int(y) - box_height
        if y0 < 0:
            y0 = max(int(y), 0)
        y0 = min(y0, max(image.shape[0] - box_height, 0))
    cv2.rectangle(image, (x0, y0), (x0 + box_width - 1, y0 + box_height - 1), tuple(colour), -1)
    (_, text_height), _ = cv2.getTextSize(text, _FONT, scale, font_thickness)
    cv2.putText(image, text, (x0 + pad, y0 + pad + text_height), _FONT, scale, _text_colour(colour), font_thickness,
                cv2.LINE_AA)


def _rectangle(image: np.ndarray, box: Sequence[float], colour: Sequence[int], thickness: int,
               edge: bool = False) -> None:
    """A box line of ``colour``; with ``edge``, on a line 2 pixels wider of ``edge_colour(colour)``."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    if edge:
        cv2.rectangle(image, (x1, y1), (x2 - 1, y2 - 1), edge_colour(colour), thickness + 2)
    cv2.rectangle(image, (x1, y1), (x2 - 1, y2 - 1), tuple(colour), thickness)


def _draw_labels(image: np.ndarray, texts: Sequence[str], boxes: np.ndarray, colours: Sequence[Sequence[int]],
                 scores: np.ndarray, max_labels: int | None = None) -> None:
    """Labels on ``boxes``, placed best score first so that none covers another (``place_labels``);
    only the ``max_labels`` best (None: all)."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")[:max_labels]
    sizes = [_label_size(image, texts[i])[:2] for i in order]
    corners = place_labels(sizes, np.asarray(boxes)[order], image.shape[0], image.shape[1])
    for i, corner in zip(order, corners):
        draw_label(image, texts[i], 0, 0, colours[i], at=corner)


def _dashed_rectangle(image: np.ndarray, box: Sequence[float], colour: Sequence[int], thickness: int) -> None:
    """A rectangle of dashes (see the module notes)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    x2, y2 = x2 - 1, y2 - 1
    dash = max(4.0, 4.0 * thickness)
    for (ax, ay), (bx, by) in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
        length = max(abs(bx - ax), abs(by - ay))
        steps = max(1, int(length // (2 * dash)))
        for i in range(steps + 1):
            t0, t1 = min(1.0, 2 * i * dash / max(length, 1e-6)), min(1.0, (2 * i + 1) * dash / max(length, 1e-6))
            start = (int(round(ax + (bx - ax) * t0)), int(round(ay + (by - ay) * t0)))
            end = (int(round(ax + (bx - ax) * t1)), int(round(ay + (by - ay) * t1)))
            cv2.line(image, start, end, tuple(colour), thickness)


def draw_detections(image: np.ndarray, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                    classes: Sequence[str], max_labels: int = MAX_LABELS) -> np.ndarray:
    """A copy of ``image`` with each box in its class colour, the ``max_labels`` best labelled
    "name score"."""
    canvas = np.ascontiguousarray(image, dtype=np.uint8).copy()
    thickness, _ = _style(canvas)
    order = np.argsort(scores, kind="stable")  # best drawn last, on top
    for i in order:
        _rectangle(canvas, boxes[i], class_colour(labels[i]), thickness, edge=True)
    _draw_labels(canvas, [f"{classes[k]} {s:.2f}" for k, s in zip(labels, scores)], boxes,
                 [class_colour(k) for k in labels], scores, max_labels)
    return canvas


def with_legend(image: np.ndarray, entries: Sequence[tuple[str, Sequence[int]]]) -> np.ndarray:
    """``image`` with a white strip below it holding the coloured entries side by side, wrapped
    into rows when the image is narrow (the legend covers nothing of the picture)."""
    sizes = [_label_size(image, text)[:2] for text, _ in entries]
    gap = max(4, _style(image)[0] * 2)
    row_height = max(h for _, h in sizes) + gap
    places, x, y = [], gap, gap
    for width, _ in sizes:
        if x > gap and x + width > image.shape[1] - gap:
            x, y = gap, y + row_height
        places.append((x, y))
        x += width + gap
    strip = np.full((y + row_height, image.shape[1], 3), 255, np.uint8)
    for (text, colour), (x, y) in zip(entries, places):
        draw_label(strip, text, x, y, colour, inside=True)
    return np.vstack([image, strip])


def draw_evaluation(image: np.ndarray, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                    classes: Sequence[str], tp: np.ndarray, ignored: np.ndarray, gt_boxes: np.ndarray,
                    gt_labels: np.ndarray, missed: np.ndarray) -> np.ndarray:
    """``image`` with detections judged against GT: true positives green, false positives red,
    detections of difficult GT grey, missed GT dashed yellow (labelled "missed", placed after the
    detections' labels), and a legend in a strip below the image."""
    canvas = np.ascontiguousarray(image, dtype=np.uint8).copy()
    thickness, _ = _style(canvas)
    for box, label in zip(gt_boxes[missed], gt_labels[missed]):
        _dashed_rectangle(canvas, box, MISSED_COLOUR, thickness)
    colours = [TP_COLOUR if t else IGNORED_COLOUR if g else FP_COLOUR for t, g in zip(tp, ignored)]
    order = np.argsort(scores, kind="stable")
    for i in order:
        _rectangle(canvas, boxes[i], colours[i], thickness, edge=True)
    missed_boxes = np.asarray(gt_boxes)[missed].reshape(-1, 4)
    texts = ([f"{classes[k]} {s:.2f}" for k, s in zip(labels, scores)]
             + [f"missed {classes[k]}" for k in np.asarray(gt_labels)[missed]])
    _draw_labels(canvas, texts, np.concatenate([np.asarray(boxes).reshape(-1, 4), missed_boxes]),
                 colours + [MISSED_COLOUR] * len(missed_boxes),
                 np.concatenate([np.asarray(scores, np.float64), np.full(len(missed_boxes), -np.inf)]))
    return with_legend(canvas, [("true positive", TP_COLOUR), ("false positive", FP_COLOUR),
                                ("missed ground truth", MISSED_COLOUR), ("difficult (ignored)", IGNORED_COLOUR)])


def save_image(path: str | Path, image: np.ndarray) -> None:
    """Write an RGB uint8 image atomically (format from the suffix: .jpg, .png, ...)."""
    path = Path(path)
    ok, data = cv2.imencode(path.suffix or ".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"cannot encode an image as {path.suffix!r} for {path}")
    write_bytes_atomic(path, data.tobytes())
