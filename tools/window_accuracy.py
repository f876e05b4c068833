#!/usr/bin/env python
"""fc8 window classification accuracy of a trained model on held-out images (JSON to stdout)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.cli.common import add_dataset_arguments, dataset_from_args, setup_logging  # noqa: E402
from detector.core.runtime import keep_freed_memory  # noqa: E402
from detector.engine.train import training_windows  # noqa: E402
from detector.engine.window_accuracy import window_accuracy  # noqa: E402
from detector.model.detector import load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_dataset_arguments(parser, default_demo_split="test")
    parser.add_argument("--model", type=Path, required=True, help="model.pt from tools/train_det.py")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    setup_logging()
    keep_freed_memory()
    model = load_model(args.model)
    dataset = dataset_from_args(args, default_demo_split="test", classes=model.classes)
    model.attach_dataset(dataset.root)
    images = training_windows(dataset, model.config, progress=not args.quiet)
    print(json.dumps(window_accuracy(model, images, args.seed, progress=not args.quiet), indent=1))


if __name__ == "__main__":
    main()
