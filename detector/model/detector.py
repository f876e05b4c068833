"""A trained detector and its file: everything test time needs, in one ``model.pt``.

The file holds the class list, the configuration, the backbone name and options, the trunk's
weights (so a randomly initialised or user-supplied trunk is reproduced exactly), the SPP
levels and scales, the fc head with its feature normalisation, the SVMs (with their feature
scale) and the box regressors, as plain tensors and arrays.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from bbox_regression.ridge import BoxRegressor
from detector.config import Config, make_config
from detector.core.io import save_checkpoint
from detector.core.paths import cache_root
from detector.features.backbones import Backbone, build_backbone
from detector.features.convmaps import ConvMapCache, ConvMapProvider, backbone_fingerprint
from detector.features.spp import SpatialPyramidPooling
from detector.head.fc import SPPHead
from svm.mining import SVMModel

FORMAT = "sppnet-detector-v1"


@dataclass
class DetectorModel:
    """The parts of a trained detector, plus the conv-map provider of the dataset in use."""

    classes: list[str]
    config: Config
    backbone: Backbone
    spp: SpatialPyramidPooling
    head: SPPHead
    svm: SVMModel | None
    regressor: BoxRegressor | None
    provider: ConvMapProvider | None = None

    @property
    def scales(self) -> tuple[int, ...]:
        return tuple(self.config.scales)

    def attach_dataset(self, voc_root: str | Path) -> None:
        """Read and write conv maps in the cache of the dataset at ``voc_root``."""
        self.provider = conv_map_provider(self.backbone, self.config, voc_root)


def conv_map_provider(backbone: Backbone, config: Config, voc_root: str | Path) -> ConvMapProvider:
    """The conv-map cache of a dataset for one trunk (its weights' fingerprint names the folder)."""
    tag = f"{backbone.name}-{backbone_fingerprint(backbone)}-max{config.max_side}"
    cache = ConvMapCache(cache_root(voc_root) / "convmaps" / tag)
    return ConvMapProvider(backbone, cache, config.max_side, config.device)


def save_model(path: Path, model: DetectorModel) -> None:
    """Write ``model.pt`` atomically."""
    save_checkpoint(path, {
        "format": FORMAT,
        "classes": list(model.classes),
        "config": model.config.to_dict(),
        "trunk": model.backbone.trunk.state_dict(),
        "levels": tuple(model.spp.levels),
        "head": model.head.state_dict(),
        "svm": model.svm.state_dict() if model.svm is not None else None,
        "regressor": model.regressor.state_dict() if model.regressor is not None else None,
    })


def load_model(path: str | Path, device: str | None = None) -> DetectorModel:
    """Load a ``model.pt``; a file that is not one is refused with a message naming it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file {path} does not exist (train one with tools/train_det.py)")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} model file")
    values = dict(state["config"])
    if device is not None:
        values["device"] = device
    config = make_config(values.pop("preset"), values)
    backbone = build_backbone(config.backbone, weights="none", **config.backbone_options)
    backbone.trunk.load_state_dict(state["trunk"])
    backbone.to(config.device).eval()
    spp = SpatialPyramidPooling(state["levels"])
    head = SPPHead(spp.output_size(backbone.channels), config.fc_width, len(state["classes"]),
                   config.dropout, fc6_rank=config.fc6_rank)
    head.load_state_dict(state["head"])
    head.to(config.device).eval()
    svm = SVMModel.from_state_dict(state["svm"]) if state["svm"] is not None else None
    regressor = BoxRegressor.from_state_dict(state["regressor"]) if state["regressor"] is not None else None
    return DetectorModel(list(state["classes"]), config, backbone, spp, head, svm, regressor)
