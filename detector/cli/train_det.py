"""Train an SPP-net detector: proposals, conv maps, fine-tuning, SVMs, box regression -> DIR/model.pt.

DIR also gets the run's record: config.json, train.log, history.jsonl, training_curves.png.
Under torchrun (torchrun --nproc_per_node N tools/train_det.py ...) the ranks share the work and
rank 0 writes DIR's files (README, "Running on several processes")."""
from __future__ import annotations

import argparse
from pathlib import Path

from torch.distributed.elastic.multiprocessing.errors import record

from detector.cli.base import HelpFormatter, error_line, tool_main
from detector.cli.common import (
    add_config_arguments,
    add_dataset_arguments,
    config_from_args,
    dataset_from_args,
    process_group,
    setup_logging,
)
from detector.core import distributed
from detector.core.runtime import keep_freed_memory
from detector.engine.train import STOP_AFTER, train_detector


@record  # under torchrun, a failing rank's traceback is in the agent's report
@tool_main("train_det.py")
def main(argv: list[str] | None = None) -> None:
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
    policy = parser.add_mutually_exclusive_group()
    policy.add_argument("--resume", action="store_true",
                        help="only reuse or resume what is in --out; stop, naming the file and the settings "
                             "that differ, rather than retrain a stage made with other settings")
    policy.add_argument("--force", action="store_true",
                        help="retrain every stage whatever is in --out (the image caches are still used)")
    args = parser.parse_args(argv)
    setup_logging()
    keep_freed_memory()
    if args.proposals is not None:
        args.set = [*args.set, f"proposals.source={Path(args.proposals).resolve()}"]
    config = config_from_args(args)
    dataset = dataset_from_args(args, default_split="train")
    with process_group(config.device):
        try:
            model_path = train_detector(dataset, config, args.out, progress=not args.quiet,
                                        policy="resume" if args.resume else "force" if args.force else "auto",
                                        stop_after=args.stop_after)
        except (ValueError, OSError) as error:  # bad input, unwritable path: the message names the value or file
            raise SystemExit(f"train_det.py: {error_line(error)}") from error
        if distributed.is_main():
            print(f"wrote {model_path}")


if __name__ == "__main__":
    main()
