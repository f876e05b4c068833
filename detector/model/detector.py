"""A detector: its parts, the one function that assembles them, and its file ``model.pt``.

``build_detector(config, classes, ...)`` is the only place a detector is put together:
training builds a fresh one, ``load_model`` builds one from a file's state, the benchmark
builds an untrained one.  What a detection needs besides the weights, the source of the
trunk's conv maps (a dataset's disk cache, or none: computed per call), is given to it there.

The file holds the class list, the resolved configuration, the trunk's weights (so a randomly
initialised or user-supplied trunk is reproduced exactly), the SPP levels, the fc head with its
feature normalisation, the SVMs (with their feature scale), the box regressors and, when it has
one, its score calibration (``calibration``: per-class maps to calibrated scores, where they were
fitted), as plain tensors and arrays.  Files written before the config had sections (``sppnet-detector-v1``, a
flat config) still load: their keys are renamed (``detector.config.LEGACY_KEYS``).

Since ``sppnet-detector-v3`` the file is sealed (``detector.core.integrity``: a SHA-256 of all its
tensors and values) and records ``stages``, the provenance of its fine-tuned head and of its
classifiers (``detector.engine.stages``).  ``read_model_file`` refuses, naming the file and what to
do, a file that is missing, unreadable (truncated, not a torch file), not a model or that fails its
checksum; files of the older formats (no checksum) are read unchecked.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from bbox_regression.ridge import BoxRegressor
from detector.config import Config, config_from_dict, upgrade_legacy
from detector.core.integrity import StateFileError, load_checked, seal
from detector.core.io import save_checkpoint
from detector.core.paths import check_name
from detector.core.runtime import check_device
from detector.features.backbones import Backbone, build_backbone
from detector.features.convmaps import CACHE_VERSION, ConvMapCache, ConvMapProvider, backbone_fingerprint
from detector.features.spp import SpatialPyramidPooling
from detector.head.fc import SPPHead
from detector.model.calibration import ScoreCalibration
from svm.linear_svm import SVMModel

FORMAT = "sppnet-detector-v3"
LEGACY_FORMATS = ("sppnet-detector-v1", "sppnet-detector-v2")
MODEL_FILE_REMEDY = "retrain it with tools/train_det.py (or copy the model file again)"


@dataclass
class DetectorModel:
    """The parts of a detector and the source of its conv maps."""

    classes: list[str]
    config: Config
    backbone: Backbone
    spp: SpatialPyramidPooling
    head: SPPHead
    svm: SVMModel | None
    regressor: BoxRegressor | None
    conv_maps: ConvMapProvider
    source: dict[str, Any] | None = None  # the model file it was loaded from: {"path", "checksum"}
    calibration: ScoreCalibration | None = None  # per-class maps to calibrated scores (detector.model.calibration)

    @property
    def scales(self) -> tuple[int, ...]:
        """The training scales (fine-tuning, SVM and box-regression features)."""
        return tuple(self.config.scales)

    @property
    def test_scales(self) -> tuple[int, ...]:
        """The scales ``detect`` computes maps at: ``test.scales``, or the training scales."""
        return tuple(self.config.test.scales or self.config.scales)

    def with_config(self, config: Config, map_folder: Path | None = None) -> DetectorModel:
        """The same weights under another config (feature path, scales, test settings), its conv
        maps cached in ``map_folder`` (None: not cached)."""
        cache = ConvMapCache(map_folder) if map_folder is not None else None
        return dataclasses.replace(self, config=config, conv_maps=ConvMapProvider(
            self.backbone, cache, config.max_side, config.device))


def conv_map_folder(cache_dir: Path, backbone: Backbone, config: Config) -> Path:
    """The conv-map folder of one trunk in a dataset's cache (its weights' fingerprint names it)."""
    tag = f"{backbone.name}-{backbone_fingerprint(backbone)}-max{config.max_side}-v{CACHE_VERSION}"
    return Path(cache_dir) / "convmaps" / tag


def build_detector(config: Config, classes: Sequence[str], cache_dir: str | Path | None = None,
                   state: Mapping[str, Any] | None = None) -> DetectorModel:
    """Assemble a detector for ``classes``: a fresh one from ``config`` (trunk weights as
    configured, a seeded fc head or the trunk's pretrained fc), or the trained one in ``state``
    (a model file's contents).  Conv maps are cached under ``cache_dir`` (a dataset's cache
    root, ``detector.core.paths.cache_root``) or, with None, computed per call."""
    backbone = build_backbone(config.backbone, weights="none" if state is not None else config.weights,
                              **config.backbone_options)
    if state is not None:
        backbone.trunk.load_state_dict(state["trunk"])
    backbone.to(config.device).eval()
    spp = SpatialPyramidPooling(state["levels"] if state is not None else config.levels or backbone.levels)
    head = SPPHead(spp.output_size(backbone.channels), config.fc_width, len(classes), config.dropout,
                   config.seed, fc6_rank=config.fc6_rank)
    svm = regressor = None
    if state is not None:
        head.load_state_dict(state["head"])
        head.eval()
        svm = SVMModel.from_state_dict(state["svm"]) if state["svm"] is not None else None
        regressor = BoxRegressor.from_state_dict(state["regressor"]) if state["regressor"] is not None else None
    elif backbone.pretrained_fc is not None:
        head.load_pretrained_fc(backbone.pretrained_fc)
    head.to(config.device)
    cache = ConvMapCache(conv_map_folder(Path(cache_dir), backbone, config)) if cache_dir is not None else None
    conv_maps = ConvMapProvider(backbone, cache, config.max_side, config.device)
    return DetectorModel(list(classes), config, backbone, spp, head, svm, regressor, conv_maps)


def model_state(model: DetectorModel, stages: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What ``model.pt`` holds (see the module docstring), sealed; ``stages``: the provenance records
    of the stages that made its parts (None: a model assembled outside training)."""
    return seal({
        "format": FORMAT,
        "classes": list(model.classes),
        "config": model.config.to_dict(),
        "trunk": model.backbone.trunk.state_dict(),
        "levels": tuple(model.spp.levels),
        "head": model.head.state_dict(),
        "svm": model.svm.state_dict() if model.svm is not None else None,
        "regressor": model.regressor.state_dict() if model.regressor is not None else None,
        "stages": dict(stages) if stages is not None else None,
        **({"calibration": model.calibration.state_dict()} if model.calibration is not None else {}),
    })


def save_model(path: Path, model: DetectorModel, stages: Mapping[str, Any] | None = None) -> None:
    """Write ``model.pt`` atomically, sealed, with the provenance ``stages`` of its parts."""
    save_checkpoint(path, model_state(model, stages))


def read_model_file(path: str | Path) -> dict[str, Any]:
    """The state of a model file with its config upgraded to the current form; a file that is not
    one is refused with a message naming it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file {path} does not exist (train one with tools/train_det.py)")
    state = load_checked(path, "model file", MODEL_FILE_REMEDY, unsealed_ok=lambda s: s.get("format") in LEGACY_FORMATS)
    if state.get("format") not in (FORMAT, *LEGACY_FORMATS):
        raise StateFileError(f"{path} is not a {FORMAT} model file; {MODEL_FILE_REMEDY}")
    try:
        for name in state["classes"]:
            check_name(name, "class name")
    except ValueError as error:
        raise StateFileError(f"{path}: {error}") from None
    if state["format"] in LEGACY_FORMATS:
        state = {**state, "config": upgrade_legacy(state["config"]), "format": FORMAT}
    return state


def load_model(path: str | Path, device: str | None = None, cache_dir: str | Path | None = None,
               overrides: Mapping[str, Any] | None = None) -> DetectorModel:
    """Load a ``model.pt``; ``overrides`` change settings that do not alter the weights (test
    settings, feature path, scales, device), checked as ``--set`` is."""
    state = read_model_file(path)
    changes = {**(overrides or {}), **({"device": device} if device is not None else {})}
    try:
        config = config_from_dict(state["config"], changes)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
    check_device(config.device)
    if config.test.scorer == "svm" and state["svm"] is None:
        raise ValueError(f"{path} has no SVMs (trained with --stop-after finetune); score with the fc8 "
                         "softmax (--scorer softmax)")
    model = build_detector(config, state["classes"], cache_dir, state)
    model.source = {"path": str(Path(path).resolve()), "checksum": state.get("checksum")}
    if state.get("calibration") is not None:
        model.calibration = ScoreCalibration.from_state_dict(state["calibration"])
    return model
