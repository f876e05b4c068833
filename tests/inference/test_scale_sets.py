"""Every subset of a scale set from one pass: the same detections as ``detect`` run with that
subset, window shares and map coverage counted per scale."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from detector.analysis.modes import cached_proposals
from detector.analysis.scale_sets import all_subsets, scale_usage, score_every_scale, subset_detections
from detector.cli import scale_sets as scale_sets_cli
from detector.core.timing import StageTimer
from detector.data.voc import load_voc
from detector.features.geometry import select_scales
from detector.inference.detect import detect
from detector.model.detector import load_model
from detector.model.features import window_features

SCALES = (160, 224, 320)


@pytest.fixture()
def tiny_model(tiny_trained, monkeypatch):
    root, run, cache = tiny_trained
    monkeypatch.setenv("SPPNET_CACHE", str(cache))
    model = load_model(run / "model.pt")
    dataset = load_voc(root, "test", model.classes)
    proposals, _ = cached_proposals(dataset, dataset.records, model.config, progress=False)
    return model, dataset, proposals


def test_all_subsets_lists_each_once():
    subsets = all_subsets(3)
    assert len(subsets) == 7 and len(set(subsets)) == 7
    assert subsets[0] == (0,) and subsets[-1] == (0, 1, 2)


@pytest.mark.parametrize("scorer", ["svm", "softmax"])
def test_a_subset_detects_as_detect_with_those_scales(tiny_model, scorer):
    model, dataset, proposals = tiny_model
    full = model.with_config(model.config.replace(scales=SCALES, **{"test.scorer": scorer,
                                                                   "test.box_voting": 0.5}), None)
    compared = 0
    for record in dataset.records:
        scored = score_every_scale(full, record, proposals[record.image_id])
        for subset in all_subsets(len(SCALES)):
            one = full.with_config(full.config.replace(**{"test.scales": tuple(SCALES[i] for i in subset)}), None)
            expected = detect(one, record, proposals[record.image_id], StageTimer())
            found = subset_detections(full, record, scored, subset)
            assert len(found.boxes) == len(expected.boxes)
            order_f, order_e = np.lexsort(found.boxes.T), np.lexsort(expected.boxes.T)
            np.testing.assert_allclose(found.boxes[order_f], expected.boxes[order_e], rtol=1e-5, atol=1e-3)
            np.testing.assert_allclose(found.scores[order_f], expected.scores[order_e], rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(found.labels[order_f], expected.labels[order_e])
            compared += len(expected.boxes)
    assert compared > 0  # some detections were compared, not only empty lists


def test_detect_reads_the_test_scales_and_training_features_the_training_scales(tiny_model):
    model, dataset, proposals = tiny_model
    record = dataset.records[0]
    boxes = proposals[record.image_id].astype(np.float32)
    trained_at_224 = model.with_config(model.config.replace(scales=(224,), **{"test.scales": (160, 320)}), None)
    tested_alone = model.with_config(model.config.replace(scales=(160, 320), **{"test.scales": ()}), None)
    assert trained_at_224.test_scales == tested_alone.test_scales == (160, 320)
    found = detect(trained_at_224, record, boxes, StageTimer())
    expected = detect(tested_alone, record, boxes, StageTimer())
    assert len(expected.boxes) > 0
    np.testing.assert_array_equal(found.boxes, expected.boxes)
    np.testing.assert_array_equal(found.scores, expected.scores)
    # the features of training (fine-tuning, SVMs, regressors) stay at the training scales
    at_224 = window_features(trained_at_224, record, boxes, StageTimer()).window_fc7()
    alone_224 = window_features(model.with_config(model.config.replace(scales=(224,)), None), record, boxes,
                                StageTimer()).window_fc7()
    at_test = window_features(trained_at_224, record, boxes, StageTimer(), scales=(160, 320)).window_fc7()
    assert torch.equal(at_224, alone_224) and not torch.allclose(at_224, at_test)


def test_scale_usage_counts_every_window_once(tiny_model):
    model, dataset, proposals = tiny_model
    usage = scale_usage(dataset.records, proposals, SCALES, model.config.max_side, margin=0)
    assert usage.windows.sum() == sum(len(proposals[r.image_id]) for r in dataset.records)
    record = dataset.records[0]
    index = select_scales(proposals[record.image_id], record.height, record.width, SCALES, model.config.max_side)
    one = scale_usage([record], proposals, SCALES, model.config.max_side, margin=0)
    np.testing.assert_array_equal(one.windows, np.bincount(index, minlength=len(SCALES)))
    assert np.all(usage.covered <= usage.pixels) and np.all(usage.covered[usage.windows > 0] > 0)
    wider = scale_usage(dataset.records, proposals, SCALES, model.config.max_side, margin=16)
    assert np.all(wider.covered >= usage.covered)


def test_the_tool_prints_every_subset(tiny_trained, monkeypatch, capsys, tmp_path):
    root, run, cache = tiny_trained
    monkeypatch.setenv("SPPNET_CACHE", str(cache))
    scale_sets_cli.main(["--voc-root", str(root), "--split", "test", "--model", str(run / "model.pt"),
                         "--scales", "160", "224", "--quiet", "--json", str(tmp_path / "s.json")])
    out = capsys.readouterr().out
    assert "160 224" in out and "subset" in out
    import json
    data = json.loads((tmp_path / "s.json").read_text())
    assert [row["scales"] for row in data["subsets"]] == [[160], [224], [160, 224]]


def test_usage_only_prints_the_shares_without_scoring(tiny_trained, monkeypatch, capsys):
    root, run, cache = tiny_trained
    monkeypatch.setenv("SPPNET_CACHE", str(cache))
    scale_sets_cli.main(["--voc-root", str(root), "--split", "test", "--model", str(run / "model.pt"),
                         "--scales", "160", "224", "--usage-only", "--quiet"])
    out = capsys.readouterr().out
    lines = [line.split() for line in out.splitlines() if line.strip().startswith(("160", "224"))]
    assert [line[0] for line in lines] == ["160", "224"] and "subset" not in out
    assert sum(float(line[1].rstrip("%")) for line in lines) == pytest.approx(100, abs=0.2)
