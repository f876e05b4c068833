"""Choose the SVMs' C on held-out training images: mine once on SPLIT-fit with a fine-tuned model's
features, refit at every candidate C on the final caches, and measure each on SPLIT-holdout.

    python tools/choose_svm_c.py --voc-root ROOT --model RUN/model.pt [--split train]
                                 [--C 0.001 0.003 0.01 0.03] [--test-variants test.box_voting=0 ...]
                                 [--grid svm.KEY=V1,V2,...] [--bootstrap 1000] [--json FILE]

Mining runs once, under the model's ``svm.C`` (``--set svm.C=...`` to change it; with
``svm.passes`` above 1 the SVMs at the end of each earlier pass are scored too); every candidate
is liblinear on that mining's final positives and caches (``HardNegativeMiner.refit``), so the
candidates differ only by C.  A refit is a fair candidate only at C at or below the mining's: the
final caches hold the negatives the mining model found hard, not the others, and a looser SVM fitted
to them alone can rank the others above its positives (measured on VOC: refits at 10x and 100x the
mining's C fell from 51.9 to 35.7 and 3.7 mAP on the held-out images); to try a larger C, mine at it
(``--set svm.C=...``).  All of them, and the model's fc8 softmax, score the same held-out
windows from one feature pass, with the model's box regressors (or, for a model without them,
regressors trained on SPLIT-fit).  For a choice that never saw the held-out images, --model should
be fine-tuned on SPLIT-fit (``train_det.py --split dev_train-fit --stop-after finetune``); a model
fine-tuned on all of SPLIT has seen them in fine-tuning (its SVMs here have not).  Each
--test-variants item (``test.KEY=VALUE[,test.KEY=VALUE]``) adds the softmax and every SVM
candidate again under those test settings (score threshold, box voting, NMS, detections per
image), from the same features.

--grid mines once per value of one ``svm`` setting (e.g. ``svm.neg_iou=0.1,0.2,0.3,0.4,0.5``, R-CNN's
grid for the negatives' overlap), every mining on the same fc7 features: the first keeps the
SPLIT-fit windows' features in a float16 file (about 6 GB for dev_train-fit at fc7 width 1024, in a
temporary folder of the cache, removed at the end) and the others read them back, so each further
value costs minutes, not a feature pass.  With --grid the refits happen only at the --C given.

Every SVM candidate's mAP is then compared with the softmax's under the same test settings by a
paired bootstrap over the held-out images (``detector.evaluation.bootstrap``): the difference,
its 90% interval and the share of resamples where the candidate is ahead, so a choice says how
much of it the 365 images alone could have made.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from detector.cli.arguments import add_dataset_arguments
from detector.cli.base import HelpFormatter, tool_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The arguments, with ``overrides``, ``variants`` and ``grid`` checked and parsed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_dataset_arguments(parser, default_split="train")
    parser.add_argument("--model", type=Path, required=True, help="model.pt whose fc layers give the features")
    parser.add_argument("--C", nargs="+", type=float,
                        help="refit every mining at these values of svm.C (default: 0.001 0.003 0.01 0.03; "
                             "none with --grid)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="svm.* settings of the mining, e.g. svm.C=0.01 svm.passes=2 svm.scales=480,576,864; "
                             "test.scales=S1,S2,...: the scales the held-out windows are scored at")
    parser.add_argument("--images", type=int, help="mine on the first N images of SPLIT-fit only")
    parser.add_argument("--test-variants", nargs="+", default=[], metavar="test.KEY=VALUE[,...]",
                        help="also score every SVM candidate under these test settings")
    parser.add_argument("--grid", metavar="svm.KEY=V1,V2,...",
                        help="mine once per value of this svm setting, all from one feature pass")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                        help="resamples of the paired bootstrap against the softmax (0: none)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.C is None:
        args.C = [] if args.grid else [1e-3, 3e-3, 1e-2, 3e-2]
    if any(not c > 0 for c in args.C):
        parser.error(f"--C values must be positive, got {args.C}")
    if args.bootstrap < 0:
        parser.error(f"--bootstrap must be 0 or more, got {args.bootstrap}")
    args.overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not (key.startswith("svm.") or key == "test.scales"):
            parser.error(f"--set takes svm.KEY=VALUE or test.scales=S1,S2,..., got {item!r}")
        args.overrides[key] = value
    args.variants = {}
    for item in args.test_variants:
        pairs = [part.partition("=") for part in item.split(",")]
        if any(not sep or not key.startswith("test.") for key, sep, _ in pairs):
            parser.error(f"--test-variants takes test.KEY=VALUE[,test.KEY=VALUE], got {item!r}")
        args.variants[item] = {key: value for key, _, value in pairs}
    args.grid_configs = {"": args.overrides}
    if args.grid:
        key, sep, values = args.grid.partition("=")
        if not sep or not key.startswith("svm.") or key in ("svm.features", "svm.scales") or not values:
            parser.error(f"--grid takes svm.KEY=V1,V2,... (not svm.features or svm.scales: the features are "
                         f"shared), got {args.grid!r}")
        args.grid_configs = {f"{key}={value}": {**args.overrides, key: value} for value in values.split(",")}
    return args


@tool_main("choose_svm_c.py")
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import dataclasses
    import json

    from detector.analysis.svm_choice import choose_svm_settings, format_choice
    from detector.cli.common import dataset_root_from_args, setup_logging

    setup_logging()
    split = args.split or "train"
    choice = choose_svm_settings(dataset_root_from_args(args), split, args.model, args.overrides, args.grid_configs,
                                 args.variants, args.C, args.images, args.bootstrap, not args.quiet)
    print(f"{split}-fit ({choice.fit_images} images) -> {split}-holdout ({choice.holdout_images} images), "
          f"model {args.model}")
    print(format_choice(choice, args.C, args.bootstrap))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"split": split, "model": str(args.model), "mining": choice.mining_stats,
                                         "results": {n: {"mAP": m["mAP"], "ap": m["ap"]}
                                                     for n, m in choice.results.items()},
                                         "minus_softmax": {n: dataclasses.asdict(d.mAP)
                                                           for n, d in choice.versus.items()}},
                                        indent=1, default=float))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
