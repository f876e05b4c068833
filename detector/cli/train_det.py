"""Train an SPP-net detector: proposals, conv maps, fine-tuning, SVMs, box regression -> DIR/model.pt.

DIR also gets the run's record: config.json, train.log, history.jsonl, training_curves.png.
Under torchrun (torchrun --nproc_per_node N tools/train_det.py ...) the ranks share the work and
rank 0 writes DIR's files (docs/distributed.md)."""
from __future__ import annotations

import argparse
from pathlib import Path

from detector.cli.arguments import add_config_arguments, add_dataset_arguments
from detector.cli.base import HelpFormatter, elastic_record, tool_main
from detector.config import STOP_AFTER


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_dataset_arguments(parser, default_split="train")
    add_config_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    parser.add_argument("--proposals", metavar="DIR_OR_FILE",
                        help="boxes from elsewhere instead of selective search: a folder of <id>.json / <id>.npz "
                             "or one JSON {id: [[x1, y1, x2, y2], ...]} (proposals/external.py); the same as "
                             "--set proposals.source=DIR_OR_FILE")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--stop-after", choices=STOP_AFTER,
                        help="finetune: end after fine-tuning; the model has no SVMs or box regressors and "
                             "scores with the fc8 softmax (quick comparisons of fine-tuning settings)")
    parser.add_argument("--calibrate", nargs="?", const="platt", choices=("platt", "isotonic"),
                        help="also give the model calibrated scores (for ensemble.py): a twin is trained on the "
                             "split's -fit part and tested on its -holdout part in OUT/calibration, and a map per "
                             "class fitted on its detections (platt, the default, or isotonic); the same as --set "
                             "calibration=METHOD")
    policy = parser.add_mutually_exclusive_group()
    policy.add_argument("--resume", action="store_true",
                        help="only reuse or resume what is in --out; stop, naming the file and the settings "
                             "that differ, rather than retrain a stage made with other settings")
    policy.add_argument("--force", action="store_true",
                        help="retrain every stage whatever is in --out (the image caches are still used)")
    args = parser.parse_args(argv)
    if args.proposals is not None:
        args.set = [*args.set, f"proposals.source={Path(args.proposals).resolve()}"]
    if args.calibrate is not None:
        args.set = [*args.set, f"calibration={args.calibrate}"]
    return args


@elastic_record  # under torchrun, a failing rank's traceback is in the agent's report
@tool_main("train_det.py")
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from detector.cli.common import config_from_args, dataset_from_args, process_group, setup_logging
    from detector.core import distributed
    from detector.core.runtime import keep_freed_memory
    from detector.engine.train import train_detector

    setup_logging()
    keep_freed_memory()
    config = config_from_args(args)
    dataset = dataset_from_args(args, default_split="train")
    with process_group(config.device):
        model_path = train_detector(dataset, config, args.out, progress=not args.quiet,
                                    policy="resume" if args.resume else "force" if args.force else "auto",
                                    stop_after=args.stop_after)
        if distributed.is_main():
            print(f"wrote {model_path}")


if __name__ == "__main__":
    main()
