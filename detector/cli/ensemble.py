"""Combine the detections of two or more models (devkit result folders) per class through NMS 0.3.

    python tools/ensemble.py --voc-root ROOT --split SPLIT DIR_A DIR_B [DIR_C ...] --out DIR
"""
from __future__ import annotations

import argparse
from pathlib import Path

from detector.cli.base import HelpFormatter, tool_main


@tool_main("ensemble.py")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--voc-root", type=Path, required=True, help="the dataset the results were made on")
    parser.add_argument("--split", required=True, help="the split the results were made on")
    parser.add_argument("result_dirs", nargs="+", type=Path, help="result folders written by test_det.py")
    parser.add_argument("--out", type=Path, required=True, help="folder for the merged result files")
    parser.add_argument("--nms-iou", type=float, default=0.3,
                        help="IoU above which a detection of one model suppresses a lower-scored one of another")
    parser.add_argument("--metric", choices=("voc07", "voc10"), default="voc07",
                        help="voc07: 11-point AP; voc10: area under the precision envelope")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="merge a folder whose run.json says its run is incomplete (refused otherwise)")
    args = parser.parse_args(argv)
    from detector.cli.common import setup_logging
    from detector.engine.ensemble import ensemble_result_dirs
    from detector.evaluation.voc_eval import format_ap_table

    setup_logging()
    metrics = ensemble_result_dirs(args.voc_root, args.split, args.result_dirs, args.out,
                                   args.nms_iou, use_07_metric=args.metric == "voc07",
                                   allow_incomplete=args.allow_incomplete)
    for folder in metrics["incomplete_inputs"]:
        print(f"input  {folder} is INCOMPLETE (its run did not finish): merged anyway, as --allow-incomplete asks")
    for folder, value in metrics["inputs"].items():
        print(f"input  {folder}: mAP {100 * value:.1f}")
    print(f"merged {args.out}: mAP {100 * metrics['mAP']:.1f}")
    print(format_ap_table(metrics))


if __name__ == "__main__":
    main()
