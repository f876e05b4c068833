"""Calibrated scores: each class's map is what scikit-learn fits on the same scores and outcomes, it
survives the model file, and a merge says which input had none."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from detector.cli import ensemble as ensemble_tool
from detector.core.detections import Detections
from detector.core.integrity import plain_values
from detector.data.demo import make_demo_dataset
from detector.data.voc import load_voc
from detector.evaluation.calibration import MIN_EACH, PLATT_C, fit_calibration, fit_map
from detector.evaluation.voc_eval import detection_outcomes, write_classes_file, write_result_files
from detector.model.calibration import POOLED, ScoreCalibration


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = make_demo_dataset(tmp_path_factory.mktemp("d") / "demo", n_train=1, n_test=40, seed=7)
    return root, load_voc(root, "test")


def noisy_detections(dataset, seed: int, skip_class: str | None = None) -> dict[str, Detections]:
    """Per class: each GT box found with a score that tends to be high, a duplicate of it and a
    shifted wrong box with scores that tend to be lower (raw margins, some negative)."""
    rng = np.random.default_rng(seed)
    sets = {c: [] for c in dataset.classes}
    for record in dataset.records:
        for box, label in zip(record.boxes, record.labels):
            name = dataset.classes[label]
            if name == skip_class:
                continue
            width = box[2] - box[0]
            boxes = np.stack([box, box + 1, box + np.array([width, 0, width, 0])]).astype(np.float32)
            scores = np.array([rng.normal(1.0, 1.0), rng.normal(-0.3, 1.0), rng.normal(-0.5, 1.0)])
            sets[name].append(Detections([record.image_id] * 3, scores, boxes))
    return {c: Detections.concat(p) if p else Detections.empty() for c, p in sets.items()}


def platt_samples(scores, right):
    """Platt's targets written out by hand: each detection as right with weight t and as wrong with
    weight 1 - t, t = (N+ + 1) / (N+ + 2) for a right one and 1 / (N- + 2) for a wrong one."""
    n_pos, n_neg = int(np.sum(right)), int(np.sum(~right))
    x, y, w = [], [], []
    for score, good in zip(scores, right):
        t = (n_pos + 1) / (n_pos + 2) if good else 1 / (n_neg + 2)
        x += [[score], [score]]
        y += [1, 0]
        w += [t, 1 - t]
    return np.array(x), np.array(y), np.array(w)


def test_each_map_is_what_scikit_learn_fits_on_the_same_scores():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(0, 1, 400), 2)  # ties on purpose
    right = rng.uniform(size=400) < 1 / (1 + np.exp(-2 * scores))
    platt = fit_map("platt", scores, right)
    direct = LogisticRegression(C=PLATT_C).fit(*platt_samples(scores, right)[:2], sample_weight=platt_samples(scores, right)[2])
    probe = np.linspace(-4, 4, 101)
    ours = ScoreCalibration("platt", {POOLED: platt}).apply("any", probe)
    assert np.allclose(ours, direct.predict_proba(probe[:, None])[:, 1], atol=1e-12)
    isotonic = fit_map("isotonic", scores, right)
    direct = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(scores, right.astype(float))
    ours = ScoreCalibration("isotonic", {POOLED: isotonic}).apply("any", probe)
    assert np.allclose(ours, direct.predict(probe), atol=1e-12)


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_every_class_is_fitted_on_its_devkit_outcomes(demo, method):
    root, dataset = demo
    detections = noisy_detections(dataset, 1)
    calibration = fit_calibration(detections, dataset.records, dataset.classes, method)
    probe = np.linspace(-3, 3, 61)
    for k, name in enumerate(dataset.classes):
        scores, right = detection_outcomes(detections[name], dataset.records, k)
        assert right.sum() >= MIN_EACH and (~right).sum() >= MIN_EACH, name
        expected = ScoreCalibration(method, {name: fit_map(method, scores, right)}).apply(name, probe)
        assert np.array_equal(calibration.apply(name, probe), expected), name
        if method == "platt":  # direct from scikit-learn too, on the same outcomes
            direct = LogisticRegression(C=PLATT_C).fit(*platt_samples(scores, right)[:2], sample_weight=platt_samples(scores, right)[2]).predict_proba(probe[:, None])[:, 1]
            assert np.allclose(calibration.apply(name, probe), direct, atol=1e-12)
    # a detection is right when the devkit counts it a TP: the duplicates and shifted boxes are not
    scores, right = detection_outcomes(detections[dataset.classes[0]], dataset.records, 0)
    assert 0.2 < right.mean() < 0.45


def test_a_class_with_too_few_outcomes_uses_the_map_of_every_class(demo):
    root, dataset = demo
    rare = dataset.classes[2]
    detections = noisy_detections(dataset, 2, skip_class=rare)
    calibration = fit_calibration(detections, dataset.records, dataset.classes, "platt")
    assert rare not in calibration.maps and rare in calibration.source["pooled_classes"]
    probe = np.linspace(-2, 2, 9)
    assert np.array_equal(calibration.apply(rare, probe), calibration.apply(POOLED, probe))


def test_platt_keeps_each_models_ranking_and_survives_the_model_file(demo):
    root, dataset = demo
    detections = noisy_detections(dataset, 3)
    calibration = fit_calibration(detections, dataset.records, dataset.classes, "platt")
    for name, found in detections.items():
        mapped = calibration.apply(name, found.scores)
        assert ((0 < mapped) & (mapped < 1)).all()
        assert np.array_equal(np.argsort(-mapped, kind="stable"), np.argsort(-found.scores, kind="stable"))
    stored = plain_values(calibration.state_dict())  # as the model file holds it: tensors
    again = ScoreCalibration.from_state_dict(stored)
    for name, found in detections.items():
        assert np.array_equal(again.apply(name, found.scores), calibration.apply(name, found.scores))


def test_a_merge_names_the_input_without_calibration(demo, tmp_path, capsys):
    root, dataset = demo
    calibration = fit_calibration(noisy_detections(dataset, 4), dataset.records, dataset.classes, "platt")
    for name, seed in (("a", 5), ("b", 6)):
        sets = noisy_detections(dataset, seed)
        write_result_files(tmp_path / name, "test", sets, dataset.classes)
        write_classes_file(tmp_path / name, dataset.classes, "test", root)
        if name == "a":  # only a's model had a calibration
            write_result_files(tmp_path / name / "calibrated", "test", calibration.apply_set(sets), dataset.classes)
            write_classes_file(tmp_path / name / "calibrated", dataset.classes, "test", root)
    ensemble_tool.main(["--voc-root", str(root), "--split", "test", str(tmp_path / "a"), str(tmp_path / "b"),
                        "--out", str(tmp_path / "m"), "--resamples", "20"])
    printed = capsys.readouterr().out
    assert f"inputs without calibrated scores: {tmp_path / 'b'}" in printed and "raw scores" in printed
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["calibrated"] is False and metrics["uncalibrated_inputs"] == [str(tmp_path / "b")]
    # both calibrated: merged on the calibrated scores, probabilities in the merged files
    write_result_files(tmp_path / "b" / "calibrated", "test", calibration.apply_set(noisy_detections(dataset, 6)),
                       dataset.classes)
    write_classes_file(tmp_path / "b" / "calibrated", dataset.classes, "test", root)
    ensemble_tool.main(["--voc-root", str(root), "--split", "test", str(tmp_path / "a"), str(tmp_path / "b"),
                        "--out", str(tmp_path / "m2"), "--resamples", "20", "--rule", "average"])
    printed = capsys.readouterr().out
    assert "calibrated scores" in printed and "without calibrated" not in printed
    line = (tmp_path / "m2" / f"comp4_det_test_{dataset.classes[0]}.txt").read_text().splitlines()[0]
    assert 0 < float(line.split()[1]) < 1
    assert "ahead of every model in" in printed and "merged mAP minus the best model's" in printed
