"""SPP-net object detection.  The public entry points, imported lazily (PEP 562) so that
importing a base module such as ``detector.core.boxes`` does not load every stage:

    from detector import Detector, make_config, train_detector, load_model, test_detector, VOCEvaluator
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Config": "detector.config",
    "make_config": "detector.config",
    "load_voc": "detector.data.voc",
    "make_demo_dataset": "detector.data.demo",
    "DetectorModel": "detector.model.detector",
    "build_detector": "detector.model.detector",
    "load_model": "detector.model.detector",
    "save_model": "detector.model.detector",
    "detect": "detector.inference.detect",
    "Detector": "detector.inference.predictor",
    "Prediction": "detector.inference.predictor",
    "evaluate_result_dir": "detector.evaluation.voc_eval",
    "VOCEvaluator": "detector.evaluation.evaluator",
    "train_detector": "detector.engine.train",
    "test_detector": "detector.engine.test",
    "ensemble_result_dirs": "detector.engine.ensemble",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'detector' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
