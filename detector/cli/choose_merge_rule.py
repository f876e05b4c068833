"""Choose how ensemble.py merges: every rule on raw and calibrated scores, on held-out training images.

    python tools/choose_merge_rule.py --voc-root ROOT --split SPLIT DIR_A DIR_B [DIR_C ...]
                                      [--scores raw platt isotonic] [--rules nms vote average] [--json FILE]

DIR_A, DIR_B, ...: test_det.py result folders of SPLIT, one per model, made on images no model was
trained on (for models trained with --split NAME-fit: --split NAME-holdout).  The images are cut in
two halves (alternate images of the split file); each model's calibration is fitted on one half and
every rule measured on the other, then the halves swap.  It prints, for each kind of scores and each
rule, the merged mAP minus the better model's (mean of the halves, each half's) and the classes
where the merge is ahead of every model, and the best pair; the test images are never used.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from detector.cli.base import HelpFormatter, tool_main

SCORES = ("raw", "platt", "isotonic")  # detector.analysis.merge_choice.SCORES
RULES = ("nms", "vote", "average")  # detector.engine.merge.RULES


@tool_main("choose_merge_rule.py")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--voc-root", type=Path, required=True, help="the dataset the results were made on")
    parser.add_argument("--split", required=True, help="the held-out split the results were made on")
    parser.add_argument("result_dirs", nargs="+", type=Path, metavar="DIR", help="one result folder per model")
    parser.add_argument("--scores", nargs="+", choices=SCORES, default=list(SCORES),
                        help="raw scores and the calibration methods to measure (default: all three)")
    parser.add_argument("--rules", nargs="+", choices=RULES, default=list(RULES),
                        help="the merge rules to measure (default: all three)")
    parser.add_argument("--metric", choices=("voc07", "voc10"), default="voc07",
                        help="voc07: 11-point AP; voc10: area under the precision envelope")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if len(args.result_dirs) < 2:
        parser.error("give at least two result folders, one per model")
    import json

    from detector.analysis.merge_choice import choose_merge, format_merge_choice
    from detector.cli.common import setup_logging

    setup_logging()
    choice = choose_merge(args.voc_root, args.split, args.result_dirs, args.scores, args.rules,
                          use_07_metric=args.metric == "voc07")
    print(format_merge_choice(choice))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        cells = [{"scores": kind, "rule": rule, "mean_gain": choice.mean_gain(kind, rule),
                  "halves": [{"mAP": c.mAP, "minus_best": c.minus_best, "ahead": list(c.ahead)} for c in pair]}
                 for (kind, rule), pair in choice.cells.items()]
        args.json.write_text(json.dumps({"split": choice.split, "folders": list(choice.folders),
                                         "half_images": list(choice.half_images),
                                         "model_map": [list(m) for m in choice.model_map], "cells": cells,
                                         "best": dict(zip(("scores", "rule"), choice.best()))}, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
