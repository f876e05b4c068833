"""Test a detector on a VOC split, or evaluate devkit result files already written.

    python tools/test_det.py [--voc-root ROOT --split SPLIT] --model DIR/model.pt --out DIR2
                             [--images N] [--feature-path spp|rcnn] [--scorer svm|softmax]
    python tools/test_det.py --voc-root ROOT --split SPLIT --eval-only DIR [--metric voc07|voc10]
                             [--compare DIR2 [--resamples 1000] [--class-margin 5]]

With ``--model`` it writes DIR2/comp4_det_<split>_<class>.txt, DIR2/detections_coco.json,
DIR2/metrics.json and the precision-recall curves DIR2/pr_curves.json and DIR2/pr_curves.png, and
prints the AP table, the COCO metrics and seconds per image per stage.  ``--show-dir DIR3`` draws
the first ``--show N`` (20) images with their detections and ground truth.
With no --voc-root it tests on the embedded demo dataset's test split.
``--eval-only DIR`` reads ``DIR/comp4_det_<split>_<class>.txt`` for the classes of
``DIR/classes.json`` (the model's list, written by the test run; else --classes or the
annotations'), prints the AP table and writes ``DIR/metrics_eval.json`` (leaving the test run's
``metrics.json`` as it was), ``DIR/pr_curves.json`` and ``DIR/pr_curves.png`` (a class with no
result file has AP 0).  ``--compare DIR2`` also prints DIR's mAP minus DIR2's (result files of
the same split, e.g. two scorers or settings) with a paired bootstrap over the split's images:
the difference, its 90% interval, the share of resamples where DIR is ahead, and the difference
per class; then how far behind the image sample alone puts the worst class when every class is
level (the centred bootstrap): the share of resamples with some class more than ``--class-margin``
AP points behind, and the bound 95% of resamples keep every class above.  A class behind by less
than that bound is within what these images resolve.
Under torchrun (torchrun --nproc_per_node N tools/test_det.py ...) the images are split across the
ranks and rank 0 writes every file and prints.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from detector.cli.arguments import add_dataset_arguments
from detector.cli.base import HelpFormatter, elastic_record, tool_main
from detector.config import FEATURE_PATHS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_dataset_arguments(parser, default_split="test")
    parser.add_argument("--model", type=Path, help="model.pt written by tools/train_det.py")
    parser.add_argument("--out", type=Path, help="folder for result files and metrics.json")
    parser.add_argument("--eval-only", type=Path, metavar="DIR",
                        help="evaluate the devkit result files in DIR instead of running a model")
    parser.add_argument("--compare", type=Path, metavar="DIR2",
                        help="with --eval-only: DIR's mAP minus DIR2's, by paired bootstrap over the images")
    parser.add_argument("--resamples", type=int, default=1000, metavar="N",
                        help="resamples of the --compare bootstrap (default 1000)")
    parser.add_argument("--class-margin", type=float, default=5.0, metavar="POINTS",
                        help="with --compare: how often the images alone put some class this many AP "
                             "points behind, every class being level (default 5)")
    parser.add_argument("--metric", choices=("voc07", "voc10"), default="voc07",
                        help="voc07: 11-point interpolated AP; voc10: area under the precision envelope")
    parser.add_argument("--scorer", choices=("svm", "softmax"),
                        help="score windows with the SVMs (the paper's) or the fc8 softmax "
                             "(default: the model's; every preset: svm)")
    parser.add_argument("--no-bbox-regression", dest="bbox_regression", action="store_false", default=None,
                        help="keep the windows where they are (the model's box regressors unused)")
    parser.add_argument("--scales", type=int, nargs="+", metavar="S",
                        help="short-side scales of the test conv maps, e.g. 480 576 688 864 1200 "
                             "(default: the model's test.scales, else its training scales)")
    parser.add_argument("--box-voting", type=float, metavar="IOU",
                        help="move each detection to the score-weighted mean of its class's windows "
                             "overlapping it by IoU >= IOU (box voting, MR-CNN); 0: off (default: the model's)")
    parser.add_argument("--feature-path", choices=FEATURE_PATHS,
                        help="feature path (default: the model's): spp pools every window from the "
                             "image's conv maps; rcnn warps each window to the trunk's input size and "
                             "runs the trunk on it (R-CNN, one trunk pass per window: slow)")
    parser.add_argument("--images", type=int, metavar="N",
                        help="test on the first N images of the split only (default: all)")
    parser.add_argument("--device", help="cpu or cuda (default: the model's)")
    parser.add_argument("--proposals", type=Path, metavar="DIR_OR_FILE",
                        help="boxes from elsewhere instead of selective search: a folder of <id>.json / <id>.npz "
                             "or one JSON {id: [[x1, y1, x2, y2], ...]} (proposals/external.py; default: the "
                             "model's proposals.source, selective search unless it was trained on such a source)")
    parser.add_argument("--show-dir", type=Path, metavar="DIR",
                        help="draw the first --show test images with detections and ground truth into DIR "
                             "(green true positive, red false positive, dashed yellow missed ground truth)")
    parser.add_argument("--show", type=int, default=20, metavar="N", help="images drawn with --show-dir (default 20)")
    parser.add_argument("--show-errors", action="store_true",
                        help="with --show-dir: draw the N images with the most false positives plus missed objects, "
                             "worst first (file names start with their rank), instead of the first N")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="with --eval-only: evaluate a folder whose run.json says its run is incomplete "
                             "(refused otherwise)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.eval_only is not None:
        if args.voc_root is None or args.split is None:
            parser.error("--eval-only needs --voc-root and --split")
    elif args.model is None or args.out is None:
        parser.error("give --model MODEL --out DIR to test a model, or --eval-only DIR")
    if args.compare is not None and args.eval_only is None:
        parser.error("--compare needs --eval-only DIR (the results to compare with DIR2)")
    if args.resamples < 1:
        parser.error(f"--resamples must be at least 1, got {args.resamples}")
    if not args.class_margin >= 0:
        parser.error(f"--class-margin must be a number of AP points, at least 0, got {args.class_margin}")
    return args


def model_overrides(args: argparse.Namespace) -> dict:
    """The model settings the command line changes (those it leaves keep the model's values)."""
    overrides = {"test.scorer": args.scorer, "feature_path": args.feature_path,
            "test.bbox_regression": args.bbox_regression, "test.box_voting": args.box_voting,
            "test.scales": tuple(args.scales) if args.scales else None,
            "proposals.source": str(args.proposals.resolve()) if args.proposals is not None else None}
    return {key: value for key, value in overrides.items() if value is not None}


def evaluate_only(args: argparse.Namespace) -> None:
    """``--eval-only DIR [--compare DIR2]``: evaluate result files, print the table (and the comparison)."""
    import json

    from detector.analysis.compare import compare_result_dirs
    from detector.core.folders import EVAL_METRICS_FILE, PR_CURVES_FILE, PR_CURVES_PNG
    from detector.evaluation.voc_eval import evaluate_result_dir, format_ap_table
    from detector.visualization.plots import plot_pr_curves

    metrics = evaluate_result_dir(args.voc_root, args.split, args.eval_only, args.classes,
                                  use_07_metric=args.metric == "voc07", metrics_file=EVAL_METRICS_FILE,
                                  allow_incomplete=args.allow_incomplete)
    curves = json.loads((args.eval_only / PR_CURVES_FILE).read_text())
    plot_pr_curves(curves, args.eval_only / PR_CURVES_PNG, f"{args.split} ({metrics['num_images']} images)")
    if not metrics["complete"]:
        print(f"{args.eval_only} is INCOMPLETE (its run did not finish): evaluated anyway, as "
              "--allow-incomplete asks")
    print(format_ap_table(metrics))
    print(f"wrote {args.eval_only / PR_CURVES_PNG}")
    if args.compare is None:
        return
    classes, compared = compare_result_dirs(args.voc_root, args.split, args.eval_only, args.compare,
                                            args.classes, args.metric == "voc07", args.resamples,
                                            allow_incomplete=args.allow_incomplete)
    print(f"{args.eval_only} minus {args.compare}, mAP points over {metrics['num_images']} images: {compared.mAP}")
    print("per class AP, with its 90% interval: " + ", ".join(
        f"{name} {difference.short()}" for name, difference in zip(classes, compared.classes)
        if difference.observed == difference.observed))
    print(f"by the images alone, every class level: some class more than {args.class_margin:g} AP "
          f"behind in {100 * compared.chance_some_class_below(args.class_margin):.0f}% of "
          f"resamples; 95% keep every class above {compared.chance_worst_bound():+.1f}")


def test_model(args: argparse.Namespace) -> None:
    """``--model M --out DIR``: test a model on a split, print the table and the seconds per image."""
    from detector.cli.common import dataset_from_args, dataset_root_from_args, process_group
    from detector.config import config_from_dict
    from detector.core import distributed
    from detector.core.paths import cache_root
    from detector.engine.test import test_detector
    from detector.evaluation.voc_eval import format_ap_table
    from detector.model.detector import load_model, read_model_file

    overrides = model_overrides(args)
    device = args.device
    if device is None and distributed.env_world_size() > 1:  # the backend follows the model's device
        device = config_from_dict(read_model_file(args.model)["config"]).device
    with process_group(device):
        model = load_model(args.model, args.device, cache_root(dataset_root_from_args(args)), overrides)
        dataset = dataset_from_args(args, default_split="test", classes=model.classes)
        if args.images is not None:
            dataset = dataset.first(args.images)
        if distributed.is_main():
            scales = " ".join(map(str, model.test_scales))
            print(f"testing {args.model} on {dataset.root} split {dataset.split!r} ({len(dataset.records)} "
                  f"images), {model.config.test.scorer} scorer, scales {scales}", flush=True)
        metrics = test_detector(model, dataset, args.out, use_07_metric=args.metric == "voc07",
                                progress=not args.quiet, show_dir=args.show_dir, show=args.show,
                                show_errors=args.show_errors)
        if distributed.is_main():
            print(format_ap_table(metrics))
            print("seconds per image: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics["seconds_per_image"].items()))
            if "drawn" in metrics:
                print(f"drew {metrics['drawn']}")


@elastic_record  # under torchrun, a failing rank's traceback is in the agent's report
@tool_main("test_det.py")
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from detector.cli.common import setup_logging
    from detector.core.runtime import keep_freed_memory

    setup_logging()
    keep_freed_memory()
    if args.eval_only is not None:
        evaluate_only(args)
    else:
        test_model(args)


if __name__ == "__main__":
    main()
