"""Combine the detections of two or more models (devkit result folders) per class.

    python tools/ensemble.py --voc-root ROOT --split SPLIT DIR_A DIR_B [DIR_C ...] --out DIR
                             [--rule nms|vote|average] [--raw]

Each folder's calibrated scores (DIR/calibrated, written by test_det.py for a model with a
calibration: tools/calibrate.py, train_det.py --calibrate) are merged when every folder has them;
otherwise the folders without are named and the raw scores merged.  Rules (detector/engine/merge.py):
nms keeps the best-scored of each group of overlapping boxes of different models (IoU > --nms-iou);
vote does that, then moves each kept box to the score-weighted mean of the overlapping boxes of
every model (IoU >= --vote-iou); average matches overlapping boxes of different models (IoU >=
--match-iou) and averages their scores, a model that missed the object counting 0.  It prints the
paper's table: per class each model's AP and the merge's, the classes where the merge is ahead of
every model, and the merged mAP minus the best model's with a paired bootstrap's 90% interval.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from detector.cli.base import HelpFormatter, tool_main

RULES = ("nms", "vote", "average")  # detector.engine.merge.RULES


@tool_main("ensemble.py")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--voc-root", type=Path, required=True, help="the dataset the results were made on")
    parser.add_argument("--split", required=True, help="the split the results were made on")
    parser.add_argument("result_dirs", nargs="+", type=Path, help="result folders written by test_det.py")
    parser.add_argument("--out", type=Path, required=True, help="folder for the merged result files")
    parser.add_argument("--rule", choices=RULES, help="how overlapping detections of different models are merged "
                                                      "(default: the one chosen on held-out images, engine/ensemble.py)")
    parser.add_argument("--raw", action="store_true", help="merge the raw scores even where calibrated ones exist")
    parser.add_argument("--nms-iou", type=float, default=0.3,
                        help="nms and vote: IoU above which a detection of one model suppresses a lower-scored one "
                             "of another")
    parser.add_argument("--vote-iou", type=float, default=0.5, help="vote: IoU of the boxes a kept box moves towards")
    parser.add_argument("--match-iou", type=float, default=0.5, help="average: IoU at which two models' boxes match")
    parser.add_argument("--resamples", type=int, default=1000,
                        help="resamples of the paired bootstrap of the merge against the best model (0: none)")
    parser.add_argument("--metric", choices=("voc07", "voc10"), default="voc07",
                        help="voc07: 11-point AP; voc10: area under the precision envelope")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="merge a folder whose run.json says its run is incomplete (refused otherwise)")
    args = parser.parse_args(argv)
    if args.resamples < 0:
        parser.error(f"--resamples must be 0 or more, got {args.resamples}")
    from detector.cli.common import setup_logging
    from detector.engine.ensemble import DEFAULT_RULE, ensemble_result_dirs, format_ensemble

    setup_logging()
    metrics = ensemble_result_dirs(args.voc_root, args.split, args.result_dirs, args.out, args.rule or DEFAULT_RULE,
                                   args.nms_iou, args.vote_iou, args.match_iou, use_07_metric=args.metric == "voc07",
                                   allow_incomplete=args.allow_incomplete, calibrated=not args.raw,
                                   resamples=args.resamples)
    for folder in metrics["incomplete_inputs"]:
        print(f"input  {folder} is INCOMPLETE (its run did not finish): merged anyway, as --allow-incomplete asks")
    if not metrics["calibrated"] and not args.raw:
        print("inputs without calibrated scores: " + ", ".join(metrics["uncalibrated_inputs"])
              + ": merged the raw scores (each model's on its own scale)")
    print(format_ensemble(metrics))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
