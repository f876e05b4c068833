"""Reuse of training stage outputs keyed by what made them; checks run before any long work.

Each stage file records its provenance (``detector.core.provenance``): ``finetune.pt`` (see
``detector.head.finetune``), ``classifiers.pt`` (the settings of ``stage_settings(config,
"classifiers")``, the classes, the trunk fingerprint, the training data digest and the checksum of
the ``finetune.pt`` whose head made its features) and ``model.pt`` (both records).  Policies, as
``tools/train_det.py`` offers them:

- ``auto`` (default, make-like): a stage whose record equals the new one is reused (an
  unfinished fine-tuning with equal record resumes); a stage whose record differs is logged with
  the keys that differ and recomputed, and so is everything downstream (their records hold the
  upstream checksum, so they differ too).  A stale stage is never paired with a new one.
- ``resume``: reuse or resume only; a stage whose record differs stops the run with a message
  naming the file and the keys (for a user who wants to be sure nothing is retrained).
- ``force``: every stage is recomputed whatever is in ``--out`` (the per-image caches, keyed by
  image content and settings, are still used).
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Iterable

import torch

from detector.config import Config, stage_settings
from detector.core.integrity import load_checked
from detector.core.provenance import make_provenance, reusable_state
from detector.features.backbones import BACKBONES, Backbone
from svm.mining import MINING_VERSION

log = logging.getLogger(__name__)

POLICIES = ("auto", "resume", "force")
CLASSIFIERS_REMEDY = "delete it (or run with --force) to train the SVMs and box regressors again"


def classifiers_provenance(config: Config, classes: list[str], trunk: str, data_digest: str,
                       finetune_checksum: str) -> dict[str, Any]:
    """The provenance record of ``classifiers.pt`` made from these inputs."""
    return make_provenance(stage_settings(config, "classifiers"), classes, trunk,
                       {"training_data": data_digest, "finetune.pt": finetune_checksum,
                        "svm.mining": MINING_VERSION})


def read_classifiers(path: Path) -> dict[str, Any]:
    """The checked contents of ``classifiers.pt`` (an unsealed file of an older version is read, then
    retrained, for it has no record)."""
    return load_checked(path, "classifier file", CLASSIFIERS_REMEDY,
                        unsealed_ok=lambda s: {"svm", "regressor"} <= set(s) and "stage" not in s)


def reusable_classifiers(path: Path, provenance: dict[str, Any], policy: str) -> dict[str, Any] | None:
    """The checked state of ``classifiers.pt`` when its record equals ``provenance``, else None
    (``detector.core.provenance.reusable_state``)."""
    return reusable_state(path, read_classifiers, provenance, policy, "SVMs and box regressors")


def check_writable(folders: Iterable[Path]) -> None:
    """Create each folder and a scratch file in it; an ``OSError`` names the folder that fails."""
    for folder in folders:
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as error:
            raise OSError(error.errno, f"cannot write in {folder}: {error.strerror or error}") from error


def check_backbone_name(name: str) -> None:
    """Refuse an unknown trunk before any work."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(sorted(BACKBONES))}")


def check_scales(backbone: Backbone, scales: Iterable[int]) -> None:
    """Refuse a scale below the trunk's total stride (its map would be under one cell, all padding)
    or whose square image the trunk cannot take (one tiny forward pass)."""
    smallest = min(scales)
    stride = backbone.geometry.stride
    if smallest < stride:
        raise ValueError(f"scale {smallest} is too small for backbone {backbone.name!r}: the short side must be at "
                         f"least its total stride {stride} (the paper's scales are 480 to 1200); use larger --scales")
    try:
        with torch.inference_mode():
            output = backbone(torch.zeros(1, 3, smallest, smallest, device=next(backbone.parameters()).device))
        ok = output.shape[-1] >= 1 and output.shape[-2] >= 1
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"scale {smallest} is too small for backbone {backbone.name!r}: its conv map would "
                         "be empty; use larger --scales")
