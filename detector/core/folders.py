"""The output folders the tools write: every file's name, and the mark of a complete run.

Three kinds of folder (docs/file_formats.md describes each file):
- a training run (``train_det.py --out``): the stage files and the run's record;
- a result folder (``test_det.py --out``, ``ensemble.py --out``): devkit result files, metrics;
- a prediction folder (``predict.py --out``): detection records and drawn images.

A result or prediction folder holds one run's outputs.  ``begin_run`` marks it incomplete in
``run.json`` first, then removes what an earlier run left; ``finish_run`` marks it complete after
the last file.  A reader refuses a folder whose ``run.json`` says "incomplete" (``check_complete``)
unless asked to read it anyway.  A folder with no ``run.json`` was written before the mark existed
and is read as it is.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterable

from detector.core.io import write_json_atomic

# a training run
CONFIG_FILE = "config.json"  # the resolved config, written when the run starts
LOG_FILE = "train.log"  # every log message of the run
HISTORY_FILE = "history.jsonl"  # fine-tuning and SVM progress, a JSON object per line
CURVES_FILE = "training_curves.png"  # drawn from HISTORY_FILE
FINETUNE_FILE = "finetune.pt"  # the fine-tuned fc head (a resumable checkpoint until complete)
CLASSIFIERS_FILE = "classifiers.pt"  # SVMs, feature scale and box regressors
MODEL_FILE = "model.pt"  # everything a test needs
SUMMARY_FILE = "train_summary.json"  # stage times, skipped images, peak memory
CALIBRATION_DIR = "calibration"  # --calibrate: the twin's training run, and its held-out results in holdout/

# a result folder
RUN_FILE = "run.json"  # {"status": "incomplete" | "complete", "made_by", "started", "finished"}
METRICS_FILE = "metrics.json"  # what the test or merge measured
EVAL_METRICS_FILE = "metrics_eval.json"  # what --eval-only measured (the test's metrics.json stays)
CLASSES_FILE = "classes.json"  # the class list, split and dataset the result files were made for
COCO_FILE = "detections_coco.json"  # the detections in COCO's results format
PR_CURVES_FILE = "pr_curves.json"  # precision and recall per class
PR_CURVES_PNG = "pr_curves.png"
RESULT_FILES = "comp4_det_*.txt"  # the devkit's files, one per class: comp4_det_<split>_<class>.txt
CALIBRATED_DIR = "calibrated"  # the same result files with calibrated scores, a result folder of its own
RESULT_OUTPUTS = (RESULT_FILES, COCO_FILE, METRICS_FILE, EVAL_METRICS_FILE, PR_CURVES_FILE, PR_CURVES_PNG,
                  CLASSES_FILE, f"{CALIBRATED_DIR}/*")

# a prediction folder
RECORDS_FILE = "detections.json"  # one record per image, written at the end
STREAM_FILE = "detections.jsonl"  # the same records, a line per image as each is made
PREDICT_OUTPUTS = (RECORDS_FILE, STREAM_FILE)


class IncompleteFolderError(ValueError):
    """A folder whose ``run.json`` says its run did not finish."""


def run_state(folder: str | Path) -> dict[str, Any] | None:
    """A folder's ``run.json``, None when it has none (written before the mark existed)."""
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is not readable JSON ({error}); rerun the tool that wrote {folder}") from error
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a run state (it holds a {type(state).__name__})")
    return state


def check_complete(folder: str | Path, allow_incomplete: bool = False) -> bool:
    """True when ``folder``'s run finished (or predates the mark); an incomplete one is refused
    naming it, or with ``allow_incomplete`` returns False for the caller to say so."""
    state = run_state(folder)
    if state is None or state.get("status") == "complete":
        return True
    if allow_incomplete:
        return False
    raise IncompleteFolderError(f"{folder} holds an incomplete run ({RUN_FILE}: status "
                                f"{state.get('status')!r}, started {state.get('started', '?')}): rerun the tool "
                                "that wrote it, or pass --allow-incomplete to read it anyway")


def begin_run(out_dir: str | Path, made_by: dict[str, Any], outputs: Iterable[str],
              extra: dict[str, Any] | None = None) -> None:
    """Mark ``out_dir`` incomplete (``made_by``: what makes the run; ``extra``: more of the state,
    e.g. the files the run will write), then remove what an earlier run left: the files matching
    ``outputs`` and those the earlier ``run.json`` listed under ``"writes"``."""
    out_dir = Path(out_dir)
    earlier = run_state(out_dir) or {}
    write_json_atomic(out_dir / RUN_FILE, {"status": "incomplete", "made_by": made_by, **(extra or {}),
                                           "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
    stale = [path for pattern in outputs for path in out_dir.glob(pattern)]
    stale += [out_dir / name for name in earlier.get("writes", []) if Path(name).name == name]
    for path in stale:
        path.unlink(missing_ok=True)


def finish_run(out_dir: str | Path) -> None:
    """Mark ``out_dir``'s run complete (after its last output is written)."""
    path = Path(out_dir) / RUN_FILE
    state = json.loads(path.read_text())
    write_json_atomic(path, {**state, "status": "complete", "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
