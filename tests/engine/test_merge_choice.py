"""Choosing the merge on held-out images: each half's cell is what ensemble.py reports when it merges
that half (with maps fitted on the other half), a model with its copy gains nothing, and the tools'
lists of rules and methods are the library's."""
from __future__ import annotations

import json

import numpy as np
import pytest

from detector.analysis.merge_choice import SCORES, choose_merge, halves, restrict
from detector.cli import calibrate as calibrate_tool
from detector.cli import choose_merge_rule as choice_tool
from detector.cli import ensemble as ensemble_tool
from detector.core.detections import Detections
from detector.data.demo import make_demo_dataset
from detector.data.voc import load_voc
from detector.engine.ensemble import ensemble_result_dirs
from detector.engine.merge import RULES
from detector.evaluation.calibration import fit_calibration
from detector.evaluation.voc_eval import write_classes_file, write_result_files
from detector.model.calibration import METHODS


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = make_demo_dataset(tmp_path_factory.mktemp("d") / "demo", n_train=1, n_test=16, seed=11)
    return root, load_voc(root, "test")


def model_detections(dataset, seed: int, scale: float, shift: float) -> dict[str, Detections]:
    """A model's raw detections: per GT box, a jittered hit and a wrong box beside it, with scores on
    the model's own scale (``scale``, ``shift``) that only tend to rank hits first."""
    rng = np.random.default_rng(seed)
    parts = {c: [] for c in dataset.classes}
    for record in dataset.records:
        for box, label in zip(record.boxes, record.labels):
            width = box[2] - box[0]
            hit = box + rng.uniform(-1.5, 1.5, 4)
            wrong = box + np.array([0.8 * width, 0, 0.8 * width, 0])
            scores = shift + scale * np.array([rng.normal(1.0, 1.0), rng.normal(0.0, 1.0)])
            parts[dataset.classes[label]].append(Detections([record.image_id] * 2, scores, np.stack([hit, wrong])))
    return {c: Detections.concat(p) for c, p in parts.items()}


def write_folder(folder, root, split, detection_set, classes):
    write_result_files(folder, split, detection_set, classes)
    write_classes_file(folder, classes, split, root)


@pytest.fixture(scope="module")
def two_models(demo, tmp_path_factory):
    root, dataset = demo
    sets = [model_detections(dataset, 1, 1.0, 0.0), model_detections(dataset, 2, 3.0, 2.0)]
    base = tmp_path_factory.mktemp("results")
    for name, found in zip("ab", sets):
        write_folder(base / name, root, "test", found, dataset.classes)
    return sets, [base / "a", base / "b"]


def test_halves_alternate_and_cover_the_split(demo):
    _, dataset = demo
    first, second = halves(dataset.records)
    assert [r.image_id for r in first] == [r.image_id for r in dataset.records[0::2]]
    assert {r.image_id for r in first} | {r.image_id for r in second} == {r.image_id for r in dataset.records}
    assert not {r.image_id for r in first} & {r.image_id for r in second}


def test_each_half_is_what_ensemble_reports_for_it(demo, two_models, tmp_path):
    root, dataset = demo
    sets, folders = two_models
    choice = choose_merge(root, "test", folders)
    assert choice.half_images == (8, 8)
    parts = halves(dataset.records)
    for k, (measure, fit) in enumerate(((parts[0], parts[1]), (parts[1], parts[0]))):
        split = f"half{k}"
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{r.image_id}\n" for r in measure))
        inputs = []
        for name, found in zip("ab", sets):
            folder = tmp_path / f"{name}{k}"
            write_folder(folder, root, split, restrict(found, measure), dataset.classes)
            calibration = fit_calibration(restrict(found, fit), fit, dataset.classes, "platt")
            write_folder(folder / "calibrated", root, split, calibration.apply_set(restrict(found, measure)),
                         dataset.classes)
            inputs.append(folder)
        for kind in ("raw", "platt"):  # ensemble.py's inputs are the files test_det.py writes: raw or Platt
            for rule in RULES:
                metrics = ensemble_result_dirs(root, split, inputs, tmp_path / f"m{k}{kind}{rule}", rule=rule,
                                               calibrated=kind != "raw", resamples=0)
                assert metrics["calibrated"] == (kind != "raw")
                cell = choice.cells[kind, rule][k]
                assert cell.mAP == pytest.approx(metrics["mAP"], abs=1e-12)
                assert cell.minus_best == pytest.approx(metrics["mAP"] - max(metrics["inputs"].values()), abs=1e-12)
                assert list(cell.ahead) == metrics["beats_every_input"]
                assert choice.model_map[k] == pytest.approx(tuple(metrics["inputs"].values()), abs=1e-12)


def test_a_model_with_its_copy_gains_nothing(demo, two_models, tmp_path, capsys):
    root, dataset = demo
    sets, _ = two_models
    for name in ("a", "copy_of_a"):
        write_folder(tmp_path / name, root, "test", sets[0], dataset.classes)
    choice_tool.main(["--voc-root", str(root), "--split", "test", str(tmp_path / "a"), str(tmp_path / "copy_of_a"),
                      "--json", str(tmp_path / "choice.json")])
    written = json.loads((tmp_path / "choice.json").read_text())
    assert len(written["cells"]) == len(SCORES) * len(RULES)
    for cell in written["cells"]:
        if cell["scores"] != "isotonic":  # a model merged with itself gives itself back (isotonic maps tie scores)
            assert [half["minus_best"] for half in cell["halves"]] == [0.0, 0.0], cell
            assert all(half["ahead"] == [] for half in cell["halves"]), cell
    out = capsys.readouterr().out
    assert "best: rule" in out and str(tmp_path / "choice.json") in out


def test_bad_requests_are_refused_by_name(demo, two_models):
    root, _ = demo
    _, folders = two_models
    with pytest.raises(ValueError, match="'median'"):
        choose_merge(root, "test", folders, rules=["median"])
    with pytest.raises(ValueError, match="at least two"):
        choose_merge(root, "test", folders[:1])


def test_the_tools_lists_are_the_librarys():
    assert choice_tool.RULES == ensemble_tool.RULES == RULES
    assert choice_tool.SCORES == SCORES and calibrate_tool.METHODS == METHODS
