"""Combine the detections of two or more models (devkit result folders) per class through NMS 0.3.

    python tools/ensemble.py --voc-root ROOT --split SPLIT DIR_A DIR_B [DIR_C ...] --out DIR
"""
from __future__ import annotations

import argparse
from pathlib import Path

from detector.cli.base import HelpFormatter, error_line, tool_main
from detector.cli.common import setup_logging
from detector.engine.ensemble import ensemble_result_dirs
from detector.evaluation.voc_eval import format_ap_table


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
    args = parser.parse_args(argv)
    setup_logging()
    try:
        metrics = ensemble_result_dirs(args.voc_root, args.split, args.result_dirs, args.out,
                                       args.nms_iou, use_07_metric=args.metric == "voc07")
    except (ValueError, OSError) as error:  # the message names the folder or file
        raise SystemExit(f"ensemble.py: {error_line(error)}") from error
    for folder, value in metrics["inputs"].items():
        print(f"input  {folder}: mAP {100 * value:.1f}")
    print(f"merged {args.out}: mAP {100 * metrics['mAP']:.1f}")
    print(format_ap_table(metrics))


if __name__ == "__main__":
    main()
