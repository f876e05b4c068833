"""Giving a trained model calibrated scores (``tools/calibrate.py``, ``train_det.py --calibrate``).

The maps are fitted on detections made on images the scoring model was not trained on: a result
folder of held-out training images (``test_det.py --split NAME-holdout``), made by the model
itself or by its twin (the same settings trained on ``NAME-fit``: the model to calibrate, trained
on all of NAME, has seen those images).  The calibrated model is written to a new file (the input
stays as it was) with the maps and where they were fitted; result folders the model made before can
be given calibrated scores without testing again (``apply_to``: a monotone map of each score).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from detector.core.folders import check_complete, run_state
from detector.data.voc import load_voc
from detector.engine.ensemble import check_same_classes, check_same_origin
from detector.engine.test import write_calibrated
from detector.evaluation.calibration import fit_calibration
from detector.evaluation.voc_eval import read_classes_file, read_result_files
from detector.model.calibration import ScoreCalibration
from detector.model.detector import DetectorModel, load_model, read_model_file, save_model

log = logging.getLogger(__name__)


def fit_on_folder(held_out: Path, voc_root: Path, split: str, classes: Sequence[str],
                  method: str) -> ScoreCalibration:
    """A calibration fitted on the detections of a complete result folder of ``split``."""
    check_complete(held_out)
    check_same_origin([held_out], split, voc_root)
    found = check_same_classes([held_out], split)
    if sorted(classes) != found:
        raise ValueError(f"{held_out} holds results for classes {found}, not the model's {sorted(classes)}")
    dataset = load_voc(voc_root, split, list(classes))
    detections = read_result_files(held_out, split, dataset.classes, [r.image_id for r in dataset.records])
    made_by = (run_state(held_out) or {}).get("made_by", {}).get("model") or {}
    return fit_calibration(detections, dataset.records, dataset.classes, method,
                           {"results": str(Path(held_out).resolve()), "split": split,
                            "made_by": made_by.get("checksum")})


def apply_to_folder(model: DetectorModel, checksum: str, folder: Path, voc_root: Path) -> Path:
    """Write ``folder/calibrated`` for a complete result folder ``model`` made (``checksum``: the
    checksum of the model file that made it, as its run.json records)."""
    check_complete(folder)
    state = run_state(folder) or {}
    made = (state.get("made_by") or {}).get("model") or {}
    if made.get("checksum") != checksum:
        raise ValueError(f"{folder} was made by another model file ({made.get('path')}), not by this model; "
                         "test this model to calibrate its results")
    dataset = load_voc(voc_root, _folder_split(folder), model.classes)
    detections = read_result_files(folder, dataset.split, dataset.classes, [r.image_id for r in dataset.records])
    log.info("calibrated scores of %s in %s", folder, folder / "calibrated")
    return write_calibrated(folder, dataset, detections, list(model.classes), model.calibration, state["made_by"])


def _folder_split(folder: Path) -> str:
    """The split a result folder was made for, from its classes.json."""
    recorded = read_classes_file(folder)
    if recorded is None or not recorded.get("split"):
        raise ValueError(f"{folder} has no classes.json naming its split; rerun tools/test_det.py for it")
    return recorded["split"]


def calibrate_model(model_path: Path, held_out: Path, voc_root: Path, split: str, out_path: Path,
                    method: str = "platt", apply_to: Sequence[Path] = ()) -> DetectorModel:
    """Fit the model's calibration on ``held_out`` (module docstring), write the calibrated model to
    ``out_path`` and calibrated copies of the result folders ``apply_to``; returns the model."""
    if Path(out_path).resolve() == Path(model_path).resolve():
        raise ValueError(f"--out {out_path} is the model being calibrated; write the calibrated model to a new file")
    model = load_model(model_path)
    checksum = model.source["checksum"]
    model.calibration = fit_on_folder(held_out, voc_root, split, model.classes, method)
    save_model(out_path, model, stages=_stages(model_path))
    for folder in apply_to:
        apply_to_folder(model, checksum, Path(folder), voc_root)
    return model


def _stages(model_path: Path) -> dict | None:
    """The provenance of the model file's stages, carried to its calibrated copy."""
    return read_model_file(model_path).get("stages")
