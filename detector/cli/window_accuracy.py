"""fc8 window classification accuracy of a trained model on held-out images (JSON to stdout)."""
from __future__ import annotations

import argparse
from pathlib import Path

from detector.cli.arguments import add_dataset_arguments
from detector.cli.base import HelpFormatter, tool_main


@tool_main("window_accuracy.py")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_dataset_arguments(parser, default_split="test")
    parser.add_argument("--model", type=Path, required=True, help="model.pt from tools/train_det.py")
    parser.add_argument("--seed", type=int, default=0, help="seed of the windows drawn from each image (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    import json

    from detector.analysis.window_accuracy import window_accuracy
    from detector.cli.common import dataset_from_args, dataset_root_from_args, setup_logging
    from detector.core.paths import cache_root
    from detector.core.runtime import keep_freed_memory
    from detector.engine.train import training_windows
    from detector.model.detector import load_model

    setup_logging()
    keep_freed_memory()
    model = load_model(args.model, cache_dir=cache_root(dataset_root_from_args(args)))
    dataset = dataset_from_args(args, default_split="test", classes=model.classes)
    images = training_windows(dataset, model.config, progress=not args.quiet)
    print(json.dumps(window_accuracy(model, images, args.seed, progress=not args.quiet), indent=1))


if __name__ == "__main__":
    main()
