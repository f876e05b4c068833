"""svm.flip_positives: the GT boxes of the mirrored training images join the positives."""
from __future__ import annotations

import numpy as np
import torch

from detector.core.boxes import flip_boxes
from detector.core.images import load_image
from detector.core.timing import StageTimer
from detector.data.voc import load_voc
from detector.engine.train import mine_classifiers, training_windows
from detector.inference.detect import window_features
from detector.model.detector import load_model


def test_features_of_the_flipped_image_are_those_of_its_mirror_copy(tiny_trained, monkeypatch):
    root, run, cache = tiny_trained
    monkeypatch.setenv("SPPNET_CACHE", str(cache))
    model = load_model(run / "model.pt")
    model = model.with_config(model.config, None)  # maps computed here, from the pixels given
    record = load_voc(root, "train").records[0]
    image = load_image(record.path)
    boxes = np.concatenate([record.boxes, [[2, 3, 40, 30], [10, 5, 60, 58]]]).astype(np.float32)
    mirrored = np.ascontiguousarray(image[:, ::-1])
    flipped = window_features(model, record, flip_boxes(boxes, record.width), StageTimer(), image=image, flip=True)
    expected = window_features(model, record, flip_boxes(boxes, record.width), StageTimer(), image=mirrored)
    torch.testing.assert_close(flipped.window_fc7(), expected.window_fc7(), rtol=1e-5, atol=1e-5)
    unflipped = window_features(model, record, boxes, StageTimer(), image=image)
    assert not torch.allclose(flipped.window_fc7(), unflipped.window_fc7(), atol=1e-3)


def test_flip_positives_doubles_every_class_positives(tiny_trained, monkeypatch):
    root, run, cache = tiny_trained
    monkeypatch.setenv("SPPNET_CACHE", str(cache))
    model = load_model(run / "model.pt")
    windows = training_windows(load_voc(root, "train"), model.config, progress=False)
    counts = {}
    for flip in (False, True):
        flipped = model.with_config(model.config.replace(**{"svm.flip_positives": flip}),
                                    cache / "maps-flip-test")
        _, _, stats, miner = mine_classifiers(flipped, windows, progress=False)
        counts[flip] = [c["num_positives"] for c in stats["classes"]]
        if flip:
            for label, parts in enumerate(miner.positives):
                if parts:  # the mirrored copies are new rows, not the same features twice
                    rows = np.concatenate(parts)
                    assert len(np.unique(rows.round(3), axis=0)) == len(rows)
    expected = [2 * sum(int(np.sum((w.record.labels == k) & ~w.record.difficult)) for w in windows)
                for k in range(len(model.classes))]
    assert counts[True] == [2 * n for n in counts[False]] == expected and sum(expected) > 0
