"""A trained detector on any image: ``Detector.load(path).predict(image)``.

    from detector import Detector
    detector = Detector.load("runs/demo/model.pt", device="cpu")
    result = detector.predict("photo.jpg")          # or an RGB uint8 array, or a list of either
    for box, score, name in zip(result.boxes, result.scores, result.class_names): ...
    picture = result.draw()                         # RGB uint8, boxes and labels drawn
    detector.predict(cv2.imread("photo.jpg"), channels="BGR")   # OpenCV's arrays are BGR

Decisions:
- The pipeline is :func:`detector.inference.detect.detect`, unchanged: an in-memory image gets
  an ``ImageRecord`` of its own size and its pixels are handed through, so nothing is decoded
  twice.  The model is built with no conv-map cache (``cache_dir=None``) and proposals come
  from selective search run here with the model's ``proposals.method`` and ``max_side``
  (or ``proposals=``): no dataset cache is read or written.  A model trained on external
  proposals (``proposals.source``) names files of its training images; for new images pass
  ``proposals=`` (selective search is used otherwise).
- ``score_threshold`` None picks the scorer's default, applied to the final detections (after
  NMS; a lower-scored box never suppresses a higher one, so filtering before or after NMS keeps
  the same boxes).  SVM scores are margins: 0 is each SVM's own decision boundary, the
  score above which it was trained to say "object" (positives at +1, hard negatives at -1), so
  ``DEFAULT_SVM_THRESHOLD = 0.0``.  Softmax scores are class probabilities:
  ``DEFAULT_SOFTMAX_THRESHOLD = 0.5`` keeps a box when its class is more likely than all
  others together.  Measured on the demo test split with the Quickstart's model (README, "Use a
  trained model"; 2.51 objects per image): SVM 0.0 keeps 2.39 detections per image at precision
  0.993 and recall 0.947 (-0.5: 0.894 / 0.980; 0.5: 1.000 / 0.870); softmax 0.5 keeps 2.73 at
  0.909 / 0.990.  Both draw the shapes with few false boxes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from detector.core.images import load_image
from detector.core.records import ImageRecord
from detector.core.timing import StageTimer
from detector.inference.detect import detect
from detector.model.detector import DetectorModel, load_model
from detector.visualization.draw import draw_detections
from proposals.external import check_boxes
from proposals.selective_search import selective_search

DEFAULT_SVM_THRESHOLD = 0.0
DEFAULT_SOFTMAX_THRESHOLD = 0.5


@dataclass
class Prediction:
    """Detections of one image: boxes (N x 4, x1 y1 x2 y2 pixels), scores, class indices and names,
    best first."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    width: int
    height: int
    classes: list[str] = field(default_factory=list, repr=False)  # the model's class list
    image: np.ndarray | None = field(default=None, repr=False, compare=False)  # the RGB pixels scored

    def __len__(self) -> int:
        return len(self.scores)

    def draw(self, image: Any = None) -> np.ndarray:
        """The image (default: the one predicted on; or a path or RGB array of the same size) with
        each box in its class colour, labelled with class and score: an RGB uint8 array."""
        pixels = self.image if image is None else as_rgb(image)[0]
        if pixels is None:
            raise ValueError("this Prediction holds no image: pass the image to draw on")
        if pixels.shape[:2] != (self.height, self.width):
            raise ValueError(f"the image is {pixels.shape[1]}x{pixels.shape[0]}, the prediction was made on "
                             f"{self.width}x{self.height}")
        return draw_detections(pixels, self.boxes, self.scores, self.labels, self.classes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``width``, ``height``, ``boxes``, ``scores``, ``labels``, ``class_names``)."""
        return {"width": self.width, "height": self.height, "boxes": self.boxes.tolist(),
                "scores": self.scores.tolist(), "labels": self.labels.tolist(), "class_names": list(self.class_names)}


def default_score_threshold(scorer: str) -> float:
    """The default threshold of a scorer (see the module docstring)."""
    return DEFAULT_SVM_THRESHOLD if scorer == "svm" else DEFAULT_SOFTMAX_THRESHOLD


def as_rgb(image: Any) -> tuple[np.ndarray, Path | None]:
    """RGB uint8 H x W x 3 pixels of a path or an array (a path is returned too), else a ValueError."""
    if isinstance(image, (str, Path)):
        return load_image(image, exif_orientation=True), Path(image)
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3 or min(array.shape[:2]) < 1:
        raise ValueError(f"an image must be a path or an RGB uint8 H x W x 3 array, got {array.dtype} {array.shape}")
    return array, None


class Detector:
    """A trained detector for single images and lists of them (see the module docstring)."""

    def __init__(self, model: DetectorModel) -> None:
        self.model = model

    @classmethod
    def load(cls, path: str | Path, device: str | None = None,
             overrides: Mapping[str, Any] | None = None) -> Detector:
        """Load a ``model.pt``; ``overrides`` as in ``load_model`` (e.g. ``{"test.scorer": "softmax"}``)."""
        return cls(load_model(path, device, cache_dir=None, overrides=overrides))

    @property
    def classes(self) -> list[str]:
        return list(self.model.classes)

    @property
    def default_threshold(self) -> float:
        """The score threshold ``predict`` uses when given none."""
        return default_score_threshold(self.model.config.test.scorer)

    def proposals(self, image: np.ndarray) -> np.ndarray:
        """Selective search boxes of RGB pixels with the model's proposal settings."""
        settings = self.model.config.proposals
        return selective_search(image, mode=settings.method, max_side=settings.max_side)

    def predict(self, image: Any, score_threshold: float | None = None,
                proposals: Any = None, channels: str = "RGB") -> Prediction | list[Prediction]:
        """Detections of a path or an image array (a Prediction), or of a list of them (a list).

        ``channels``: the order of an array's channels, "RGB" (PIL, imageio, matplotlib) or "BGR"
        (``cv2.imread``); paths are read as RGB whatever it says.  ``proposals``: M x 4 boxes per
        image (a list for a list) instead of selective search, checked as ``--proposals`` files
        are (finite, x1 < x2, y1 < y2, inside the image)."""
        if channels not in ("RGB", "BGR"):
            raise ValueError(f"channels must be 'RGB' or 'BGR', not {channels!r}")
        if isinstance(image, (list, tuple)):
            boxes = proposals if proposals is not None else [None] * len(image)
            if len(boxes) != len(image):
                raise ValueError(f"proposals: {len(boxes)} arrays for {len(image)} images")
            return [self._predict_one(i, score_threshold, b, channels) for i, b in zip(image, boxes)]
        return self._predict_one(image, score_threshold, proposals, channels)

    def _predict_one(self, image: Any, score_threshold: float | None,
                     proposals: np.ndarray | None, channels: str) -> Prediction:
        pixels, path = as_rgb(image)
        if path is None and channels == "BGR":
            pixels = np.ascontiguousarray(pixels[:, :, ::-1])
        height, width = pixels.shape[:2]
        record = ImageRecord(path.stem if path else "image", path or Path("<memory>"), width, height)
        boxes = (self.proposals(pixels) if proposals is None
                 else check_boxes(proposals, width, height, f"proposals= of {path or 'the image array'}"))
        found = detect(self.model, record, boxes, StageTimer(), image=pixels)
        threshold = self.default_threshold if score_threshold is None else score_threshold
        keep = found.scores >= threshold
        labels = found.labels[keep].astype(np.int64)
        return Prediction(np.asarray(found.boxes[keep], np.float32), np.asarray(found.scores[keep], np.float64),
                          labels, [self.model.classes[k] for k in labels], width, height,
                          list(self.model.classes), pixels)

