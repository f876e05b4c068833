"""The log of a training run, kept in its output folder:

- ``config.json``: the resolved config (``Config.to_dict()``), written when the run starts;
- ``train.log``: every log record of the run (each stage's messages, warnings, the timing table)
  from a ``logging.FileHandler`` on the root logger for the run's duration.  Progress bars are
  not in it: their carriage-return updates are terminal output, and the same figures are in
  ``history.jsonl``;
- ``history.jsonl``: one JSON object per line: ``{"stage": "run", "time"}`` when a run starts
  (a resumed run appends after the earlier one), ``{"stage": "finetune", "iteration", "loss",
  "fg_accuracy", "accuracy", "lr"}`` every ``finetune.history_every`` iterations, and
  ``{"stage": "svm", "class", "class_name", "retrain", "pass", "positives", "negatives",
  "evicted", "seconds"}`` after every SVM retrain;
- ``training_curves.png``: drawn from ``history.jsonl`` when the run ends (also after a failure).

Decisions: ``history.jsonl`` is appended line by line and flushed (a killed run loses at most the
line being written; ``read_history`` skips a torn last line), not rewritten atomically: it is a
log.  ``config.json`` and the PNG go through ``detector.core.io``.  While the run lasts the root
logger's level is lowered to INFO if it was higher, so a library caller's run is recorded too.
Under ``torchrun`` only rank 0 keeps the log (``active``): ``train.log`` holds rank 0's messages.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

from detector.config import Config
from detector.core.folders import CONFIG_FILE, CURVES_FILE, HISTORY_FILE, LOG_FILE
from detector.core.interrupt import current_stage
from detector.core.io import write_json_atomic, write_text_atomic
from detector.core.provenance import StageRefused
from detector.visualization.plots import plot_training_curves

log = logging.getLogger(__name__)



def read_history(path: str | Path) -> list[dict]:
    """The rows of a ``history.jsonl`` (a torn last line, from a killed run, is skipped)."""
    rows = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines) - 1:
                raise ValueError(f"{path}: line {number + 1} is not JSON") from None
    return rows


class RunLog:
    """Context manager that keeps the log of one training run in ``out_dir`` (module docstring)."""

    def __init__(self, out_dir: str | Path, config: Config, classes: Sequence[str], active: bool = True) -> None:
        """``active`` False: keep nothing (the ranks other than 0 of a ``torchrun`` run)."""
        self.active = active
        self.out_dir = Path(out_dir)
        self.config = config
        self.classes = list(classes)
        self._handler: logging.FileHandler | None = None
        self._history = None
        self._root_level = logging.WARNING
        self._earlier_config: str | None = None

    def __enter__(self) -> RunLog:
        if not self.active:
            return self
        self.out_dir.mkdir(parents=True, exist_ok=True)
        earlier = self.out_dir / CONFIG_FILE
        self._earlier_config = earlier.read_text(encoding="utf-8") if earlier.is_file() else None
        write_json_atomic(self.out_dir / CONFIG_FILE, self.config.to_dict())
        root = logging.getLogger()
        self._handler = logging.FileHandler(self.out_dir / LOG_FILE, encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._handler.setLevel(logging.INFO)
        root.addHandler(self._handler)
        self._root_level = root.level
        if root.getEffectiveLevel() > logging.INFO:
            root.setLevel(logging.INFO)
        self._history = open(self.out_dir / HISTORY_FILE, "a", encoding="utf-8")
        self._write({"stage": "run", "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
        log.info("run log in %s (%s, %s, %s)", self.out_dir, CONFIG_FILE, LOG_FILE, HISTORY_FILE)
        return self

    def _write(self, row: dict[str, Any]) -> None:
        if not self.active:
            return
        self._history.write(json.dumps(row) + "\n")
        self._history.flush()

    def finetune(self, row: dict[str, Any]) -> None:
        """Record a fine-tuning progress row (``finetune``'s ``on_progress``)."""
        self._write({"stage": "finetune", **row})

    def svm_retrain(self, row: dict[str, Any]) -> None:
        """Record an SVM retrain (``train_svms``' ``on_retrain``)."""
        name = self.classes[row["class"]] if 0 <= row["class"] < len(self.classes) else str(row["class"])
        self._write({"stage": "svm", "class_name": name, **row})

    def __exit__(self, kind: type | None, error: BaseException | None, trace: object) -> None:
        if not self.active:
            return
        if error is not None:  # a refusal, a failure or an interruption, kept in train.log too
            log.error("training stopped during %s: %s", current_stage(), str(error) or type(error).__name__)
            if isinstance(error, StageRefused):  # nothing was trained: config.json describes the folder again
                if self._earlier_config is not None:
                    write_text_atomic(self.out_dir / CONFIG_FILE, self._earlier_config)
                else:
                    (self.out_dir / CONFIG_FILE).unlink(missing_ok=True)
        self._history.close()
        try:
            plot_training_curves(read_history(self.out_dir / HISTORY_FILE), self.out_dir / CURVES_FILE)
        except (OSError, ValueError, KeyError) as error:  # the run's result matters more than its plot
            log.warning("could not draw %s: %s", self.out_dir / CURVES_FILE, error)
        root = logging.getLogger()
        root.removeHandler(self._handler)
        root.setLevel(self._root_level)
        self._handler.close()
