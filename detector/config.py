"""One configuration object for the whole pipeline, with named presets and checked overrides.

Presets:
- ``cpu`` (default): sized for a 2-core CPU: 1024-wide fc layers and a short schedule so that
  fine-tuning on 2000 images takes at most ~15 minutes.  Its learning rate is 1e-2, not the
  paper's 1e-4: the paper fine-tuned fc layers pretrained on ImageNet, while the default trunk
  (EfficientNet-Lite0) has none, and from random fc layers 1e-3 left the demo's held-out
  foreground windows at 14% accuracy after 1000 iterations where 1e-2 reached 89%.
- ``demo``: the embedded demo dataset's default (the tools pick it when no --voc-root is given):
  one scale (its images are small), 512-wide fc layers and 1000 iterations, so the README's
  train + test run finishes in minutes on a laptop.
- ``paper``: the paper's ZF-5 setting for a GPU: 4096-wide fc layers, five scales,
  lr 1e-4 for 250k mini-batches then 1e-5 for 50k.

Overrides come from a JSON file (``--config FILE``) or ``key=value`` pairs; an unknown key or a
value of the wrong type is refused with a message naming it.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

PAPER_SCALES = (480, 576, 688, 864, 1200)


@dataclass
class Config:
    """Every tunable of the pipeline; see the module docstring for the presets."""

    preset: str = "cpu"
    backbone: str = "efficientnet_lite0"
    backbone_options: dict = field(default_factory=dict)
    weights: str | None = None
    levels: tuple[int, ...] | None = None  # None: the backbone's default pyramid
    scales: tuple[int, ...] = PAPER_SCALES
    max_side: int = 2000  # cap on the long side of a resized image (elongated images)
    # proposals
    proposal_mode: str = "fast"
    proposal_max_side: int = 500
    workers: int = 2
    # fine-tuning
    fc_width: int = 1024
    # rank of a truncated-SVD fc6, set by tools/compress_net.py on a trained model
    # (detector.model.compression); None: the full fc6, the only form training accepts
    fc6_rank: int | None = None
    dropout: float = 0.5
    batch_size: int = 128
    # Windows pooled once per image (and per flip) for fine-tuning.  32 keeps the float16 bank of
    # VOC dev_train at stride 32 to 2000 x 2 x 32 x 16000 x 2 B = 4.1 GB (64 would need 8.2 GB).
    bank_windows_per_image: int = 32
    fg_fraction: float = 0.25
    fg_iou: float = 0.5
    bg_iou_low: float = 0.1
    bg_iou_high: float = 0.5
    flip: bool = True
    lr: float = 1e-2  # fc layers start from random (no pretrained fc for the default trunk)
    lr_steps: tuple[int, ...] = (3000,)  # iteration at which lr is multiplied by lr_gamma
    lr_gamma: float = 0.1
    iterations: int = 4000
    momentum: float = 0.9
    weight_decay: float = 5e-4
    checkpoint_every: int = 500
    # SVMs and box regression
    scorer: str = "svm"  # "svm" (the paper) or "softmax" (fc8)
    svm_c: float = 1e-3
    svm_pos_weight: float = 2.0
    svm_intercept_scaling: float = 10.0
    svm_passes: int = 1
    bbox_alpha: float = 1000.0
    # feature path: "spp" pools windows from conv maps; "rcnn" warps each window to the trunk's
    # input size with context_pad pixels of context and runs the trunk on it (detector.features.rcnn)
    mode: str = "spp"
    context_pad: int = 16
    rcnn_batch_size: int = 8  # windows per trunk batch in rcnn mode
    # test
    nms_iou: float = 0.3
    max_per_image: int = 100
    score_threshold: float = -1.5  # SVM margin below which windows are dropped before regression/NMS
    softmax_threshold: float = 1e-3  # the same for fc8 softmax probabilities
    seed: int = 0
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {},
    "demo": {
        "backbone_options": {"feature_stride": 16},  # measured there: small synthetic shapes
        "bank_windows_per_image": 64,
        "scales": (480,),
        "fc_width": 512,
        "iterations": 1000,
        "lr_steps": (700,),
        "checkpoint_every": 250,
    },
    "paper": {
        "backbone": "zf5",
        "fc_width": 4096,
        "scales": PAPER_SCALES,
        "lr": 1e-4,
        "lr_steps": (250_000,),
        "iterations": 300_000,
        "checkpoint_every": 10_000,
        "device": "cuda",
    },
}


def _coerce(name: str, value: Any, annotation: str) -> Any:
    """Convert an override to the field's type or raise a ValueError naming the field."""
    try:
        if "tuple" in annotation:
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split() if v]
            kind = float if "float" in annotation else int
            return tuple(kind(v) for v in value) if value is not None else None
        if annotation.startswith("dict"):
            return dict(json.loads(value) if isinstance(value, str) else value)
        if annotation.startswith("bool"):
            if isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes")
            return bool(value)
        if value is None and "None" in annotation:
            return None
        if annotation.startswith("int"):
            return int(value)
        if annotation.startswith("float"):
            return float(value)
        return str(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"config: bad value {value!r} for {name!r} ({annotation})") from error


def make_config(preset: str = "cpu", overrides: Mapping[str, Any] | None = None,
                config_file: str | Path | None = None) -> Config:
    """Build a Config from a preset, then a JSON file, then explicit overrides (highest)."""
    if preset not in PRESETS:
        raise ValueError(f"config: unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    values: dict[str, Any] = {"preset": preset, **PRESETS[preset]}
    if config_file is not None:
        path = Path(config_file)
        try:
            values.update(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"config: cannot read {path}: {error}") from error
    explicit = {k: v for k, v in (overrides or {}).items() if v is not None}
    values.update(explicit)
    if "backbone" in explicit and "backbone_options" not in explicit and "backbone_options" in PRESETS[preset] \
            and explicit["backbone"] != PRESETS[preset].get("backbone", Config.backbone):
        del values["backbone_options"]  # a preset's trunk options belong to the preset's trunk
    known = {f.name: f for f in fields(Config)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"config: unknown key(s) {unknown}; known keys: {sorted(known)}")
    config = Config()
    for name, value in values.items():
        annotation = str(known[name].type)
        setattr(config, name, _coerce(name, value, annotation))
    if config.scorer not in ("svm", "softmax"):
        raise ValueError(f"config: scorer must be 'svm' or 'softmax', not {config.scorer!r}")
    if config.mode not in ("spp", "rcnn"):
        raise ValueError(f"config: mode must be 'spp' or 'rcnn', not {config.mode!r}")
    if config.context_pad < 0 or config.rcnn_batch_size < 1:
        raise ValueError(f"config: context_pad must be >= 0 and rcnn_batch_size >= 1, got "
                         f"{config.context_pad} and {config.rcnn_batch_size}")
    if config.fc6_rank is not None and config.fc6_rank < 1:
        raise ValueError(f"config: fc6_rank must be a positive rank or None, got {config.fc6_rank}")
    if not config.scales or min(config.scales) <= 0:
        raise ValueError(f"config: scales must be positive, got {config.scales}")
    return config
