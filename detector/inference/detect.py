"""Detection on one image: conv maps, pooling, fc, scoring, box regression, NMS.

In R-CNN mode (``config.feature_path == "rcnn"``) each window is warped and run through the trunk
instead (``detector.features.rcnn``): the trunk time counts as ``conv``, the pyramid pooling of the
warped windows' maps as ``pooling``; the later stages are the same.

Every proposal is scored by every class (SVM margins on fc7, or the fc8 softmax), each class's
windows are moved by that class's box regressor (unless ``test.bbox_regression`` is off) and
clipped to the image, then NMS at IoU 0.3 per class (``torchvision.ops.batched_nms``) and at most
``max_per_image`` detections per image by score; with ``test.box_voting`` each survivor's box is
then the score-weighted mean of the overlapping windows of its class (``vote_boxes``).  Windows
scoring below ``score_threshold`` are dropped before regression and NMS: they could never reach
the top 100 and would cost time.  Seconds
per stage are accumulated in a ``StageTimer`` so a test run can print where its time goes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import batched_nms

from detector.core.boxes import vote_boxes
from detector.core.detections import ImageDetections
from detector.core.records import ImageRecord
from detector.core.timing import StageTimer
from detector.model.detector import DetectorModel
from detector.model.features import WindowFeatures, window_features


def score_windows(model: DetectorModel, features: WindowFeatures) -> np.ndarray:
    """Scores (N x K) of the N distinct windows for every class: SVM margins (on fc7 or pool5, as
    the model's ``svm.features``) or fc8 softmax probabilities."""
    if model.config.test.scorer == "svm":
        return model.svm.scores(features.svm_input(model.config.svm.features).float().numpy())
    with torch.inference_mode():
        device = next(model.head.parameters()).device
        probs = torch.softmax(model.head.fc8(features.fc7.to(device)), dim=1).cpu()
    return probs[:, 1:].numpy()


def detect(model: DetectorModel, record: ImageRecord, proposals: np.ndarray,
           timer: StageTimer, image: np.ndarray | None = None) -> ImageDetections:
    """Run the test pipeline on one image's proposals at the model's test scales (``image``: its
    RGB pixels, if in memory)."""
    boxes = np.asarray(proposals, dtype=np.float32).reshape(-1, 4)
    features = window_features(model, record, boxes, timer, image=image, scales=model.test_scales)
    found = detections_from_features(model, record, boxes, features, timer)
    timer.images += 1
    return found


def detections_from_features(model: DetectorModel, record: ImageRecord, boxes: np.ndarray,
                             features: WindowFeatures, timer: StageTimer) -> ImageDetections:
    """Score the windows' features, regress, suppress: ``detect`` after its features (``boxes``:
    N x 4 float32 windows, ``features`` theirs, so several scorers can share one feature pass)."""
    scored = scored_windows(model, record, boxes, features, timer)
    with timer.stage("nms"):
        return suppress(model, scored.boxes, scored.scores, scored.classes, scored.threshold)


@dataclass
class ScoredWindows:
    """The (window, class) pairs scoring above the scorer's drop threshold, their boxes regressed."""

    rows: np.ndarray  # window index per pair
    classes: np.ndarray  # class index per pair
    scores: np.ndarray
    boxes: np.ndarray  # N x 4: the window moved by its class's regressor (or as given)
    threshold: float  # the drop threshold (box voting weighs by the margin above it)


def scored_windows(model: DetectorModel, record: ImageRecord, boxes: np.ndarray, features: WindowFeatures,
                   timer: StageTimer) -> ScoredWindows:
    """Score every window for every class, keep the pairs above the drop threshold, regress them."""
    with timer.stage("scoring"):
        scores = score_windows(model, features)[features.rows]
        threshold = (model.config.test.score_threshold if model.config.test.scorer == "svm"
                     else model.config.test.softmax_threshold)
        rows, classes = np.nonzero(scores > threshold)
        kept_scores = scores[rows, classes]
    with timer.stage("regression"):
        if model.regressor is not None and model.config.test.bbox_regression and len(rows):
            kept_boxes = model.regressor.apply(features.pooled.numpy(), boxes[rows], classes,
                                               record.width, record.height,
                                               feature_rows=features.rows[rows])
        else:
            kept_boxes = boxes[rows]
    return ScoredWindows(rows, classes, kept_scores, kept_boxes, float(threshold))


def suppress(model: DetectorModel, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
             threshold: float) -> ImageDetections:
    """Per-class NMS of scored windows (N x 4 boxes, N scores, N class indices), at most
    ``max_per_image`` kept by score, then box voting when on: the test pipeline's last step."""
    keep = batched_nms(torch.from_numpy(np.ascontiguousarray(boxes, np.float32)),
                       torch.from_numpy(np.asarray(scores, np.float32)),
                       torch.from_numpy(np.asarray(classes, np.int64)), model.config.test.nms_iou).numpy()
    keep = keep[: model.config.test.max_per_image]  # batched_nms returns indices by score
    final_boxes = boxes[keep]
    if model.config.test.box_voting > 0 and len(keep):
        # weights: the margin above the drop threshold, > 0 for every window that passed it
        final_boxes = vote_boxes(final_boxes, classes[keep], boxes, scores - threshold,
                                 classes, model.config.test.box_voting)
    return ImageDetections(np.asarray(final_boxes, np.float32), scores[keep], classes[keep].astype(np.int64))
