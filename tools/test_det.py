"""Test a detector on a VOC split, or evaluate devkit result files already written.

    python tools/test_det.py --voc-root ROOT --split SPLIT --eval-only DIR [--metric voc07|voc10]
                             [--classes CLASS ...]

``--eval-only DIR`` reads ``DIR/comp4_det_<split>_<class>.txt``, prints the AP table and
writes ``DIR/metrics.json``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.cli import setup_logging  # noqa: E402
from detector.evaluation import evaluate_result_dir, format_ap_table  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voc-root", type=Path, required=True, help="dataset folder in the VOC layout")
    parser.add_argument("--split", required=True, help="split name (ImageSets/Main/<split>.txt)")
    parser.add_argument("--eval-only", type=Path, metavar="DIR",
                        help="evaluate the devkit result files in DIR instead of running a model")
    parser.add_argument("--metric", choices=("voc07", "voc10"), default="voc07",
                        help="voc07: 11-point interpolated AP; voc10: area under the precision envelope")
    parser.add_argument("--classes", nargs="+", metavar="CLASS",
                        help="class list (default: the classes found in the split's annotations)")
    args = parser.parse_args(argv)
    if args.eval_only is None:
        parser.error("--eval-only DIR is required (testing a model arrives with the detection pipeline)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging()
    try:
        metrics = evaluate_result_dir(args.voc_root, args.split, args.eval_only, args.classes,
                                      use_07_metric=args.metric == "voc07")
    except (FileNotFoundError, ValueError) as error:  # bad input: the message names the file
        raise SystemExit(f"test_det.py: {error}") from error
    print(format_ap_table(metrics))


if __name__ == "__main__":
    main()
