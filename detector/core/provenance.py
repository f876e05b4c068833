"""What made a stage output: its provenance record, and what differs between two records.

A record is a plain dict saved inside the stage's file: ``settings`` (the flat config keys the
stage depends on, ``detector.config.stage_settings``), ``classes``, ``trunk`` (the trunk's weight
fingerprint) and ``inputs`` (digests of what the stage consumed: the training data, the upstream
stage file's checksum).  An output is reused only when its record equals the one a rerun would
write; ``differences`` names every key that does not, for the log line and the refusal message.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from detector.core.images import image_digest
from detector.core.windows import ImageWindows

log = logging.getLogger(__name__)


class StageRefused(ValueError):
    """``--resume`` found a stage file made with other settings or inputs: the run stops, changing nothing."""


def make_provenance(settings: Mapping[str, Any], classes: list[str], trunk: str,
                inputs: Mapping[str, str]) -> dict[str, Any]:
    """A provenance record, JSON-normalised (tuples as lists) so that saved and new ones compare equal."""
    return json.loads(json.dumps({"settings": dict(settings), "classes": list(classes), "trunk": trunk,
                                  "inputs": dict(inputs)}, default=str))


def _short(value: Any) -> str:
    """A value for a log line, cut to 60 characters."""
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def differences(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """``"key: old -> new"`` for every entry of two records that differs (a missing record: one line)."""
    if not old:
        return ["no record of the settings that made it (written by an older version)"]
    lines = []
    for part in ("settings", "inputs"):
        before, after = old.get(part, {}) or {}, new.get(part, {}) or {}
        for key in sorted(set(before) | set(after)):
            if before.get(key) != after.get(key):
                lines.append(f"{key}: {_short(before.get(key))} -> {_short(after.get(key))}")
    for part in ("classes", "trunk"):
        if old.get(part) != new.get(part):
            lines.append(f"{part}: {_short(old.get(part))} -> {_short(new.get(part))}")
    return lines


def reusable_state(path: Path, read: Callable[[Path], dict[str, Any]], record: Mapping[str, Any], policy: str,
                   what: str) -> dict[str, Any] | None:
    """The checked state in ``path`` (``read``) when its ``"stage"`` record equals ``record``; None when
    the stage must be (re)computed: policy ``force``, no file, or a differing record under ``auto``
    (logged with the keys that differ); a ``ValueError`` naming the file and keys under ``resume``."""
    if policy == "force" or not Path(path).exists():
        return None
    state = read(path)
    changed = differences(state.get("stage"), record)
    if not changed:
        return state
    if policy == "resume":
        raise StageRefused(f"{path} was made with other settings or inputs ({'; '.join(changed)}); use "
                         f"another --out, or rerun without --resume to redo the {what}")
    log.warning("%s: %s was made with other settings or inputs (%s); doing it again", what, path, "; ".join(changed))
    return None


def training_data_digest(train: Sequence[ImageWindows]) -> str:
    """Digest of the training images' ids, bytes (``image_digest``), GT boxes, labels and flags: the
    training data every training stage's record names (fine-tuning's and the classifiers')."""
    digest = hashlib.sha256()
    for windows in train:
        record = windows.record
        digest.update(f"{record.image_id}\0{image_digest(record.path)}\0".encode())
        for array in (record.boxes, record.labels, record.difficult):
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:32]
