"""fc8 window classification accuracy of a trained model on held-out images (JSON to stdout)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from detector.cli.base import HelpFormatter, error_line, tool_main
from detector.cli.common import (
    add_dataset_arguments,
    dataset_from_args,
    dataset_root_from_args,
    setup_logging,
)
from detector.core.paths import cache_root
from detector.core.runtime import keep_freed_memory
from detector.engine.train import training_windows
from detector.engine.window_accuracy import window_accuracy
from detector.model.detector import load_model


@tool_main("window_accuracy.py")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_dataset_arguments(parser, default_split="test")
    parser.add_argument("--model", type=Path, required=True, help="model.pt from tools/train_det.py")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    setup_logging()
    keep_freed_memory()
    try:
        model = load_model(args.model, cache_dir=cache_root(dataset_root_from_args(args)))
        dataset = dataset_from_args(args, default_split="test", classes=model.classes)
        images = training_windows(dataset, model.config, progress=not args.quiet)
        accuracy = window_accuracy(model, images, args.seed, progress=not args.quiet)
    except (ValueError, OSError) as error:  # bad input, unwritable or full disk: the message names the file
        raise SystemExit(f"window_accuracy.py: {error_line(error)}") from error
    print(json.dumps(accuracy, indent=1))


if __name__ == "__main__":
    main()
