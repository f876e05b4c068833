"""Held-out window classification by the fine-tuned fc8: how well the head separates classes.

Windows are drawn from each image as in training (25% foreground with IoU >= 0.5, the rest
background with IoU in [0.1, 0.5)), pooled at their best scale as at test time, and classified
by the arg-max of fc8.  Reported beside the accuracy: the accuracy of always answering the most
frequent label (the chance level to beat), the accuracy on foreground windows alone, and the
mean per-label recall (balanced accuracy; chance is 1 / number of labels).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from detector.core.timing import StageTimer
from detector.core.windows import ImageWindows
from detector.head.sampling import sample_windows
from detector.model.detector import DetectorModel
from detector.model.features import window_features


def window_accuracy(model: DetectorModel, images: Sequence[ImageWindows], seed: int = 0,
                    windows_per_image: int = 64, progress: bool = True) -> dict[str, float]:
    """fc8 accuracy on windows sampled from ``images`` (held out from training)."""
    config = model.config
    sampling = dataclasses.replace(config.sampling, windows_per_image=windows_per_image)
    rng = np.random.default_rng(seed)
    predicted, truth = [], []
    for windows in tqdm(images, desc="window accuracy", disable=not progress, unit="img"):
        indices, labels = sample_windows(windows, sampling, rng)
        if not len(indices):
            continue
        fc7 = window_features(model, windows.record, windows.boxes[indices], StageTimer()).window_fc7()
        with torch.inference_mode():
            predicted.append(model.head.fc8(fc7).argmax(1).numpy())
        truth.append(labels)
    predicted, truth = np.concatenate(predicted), np.concatenate(truth)
    labels, counts = np.unique(truth, return_counts=True)
    foreground = truth > 0
    return {
        "windows": int(len(truth)),
        "accuracy": float(np.mean(predicted == truth)),
        "majority_label_accuracy": float(counts.max() / len(truth)),
        "foreground_accuracy": float(np.mean(predicted[foreground] == truth[foreground])),
        "balanced_accuracy": float(np.mean([np.mean(predicted[truth == k] == k) for k in labels])),
        "balanced_chance": float(1.0 / (len(model.classes) + 1)),
    }
