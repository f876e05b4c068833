"""Choose the SVMs' C on held-out training images: mine once on SPLIT-fit with a fine-tuned model's
features, refit at every candidate C on the final caches, and measure each on SPLIT-holdout.

    python tools/choose_svm_c.py --voc-root ROOT --model RUN/model.pt [--split dev_train]
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
import json
from pathlib import Path

from detector.cli.base import HelpFormatter, error_line, tool_main
from detector.cli.common import add_dataset_arguments, dataset_root_from_args, setup_logging


@tool_main("choose_svm_c.py")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_dataset_arguments(parser, default_split="dev_train")
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
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not (key.startswith("svm.") or key == "test.scales"):
            parser.error(f"--set takes svm.KEY=VALUE or test.scales=S1,S2,..., got {item!r}")
        overrides[key] = value
    variants = {}
    for item in args.test_variants:
        pairs = [part.partition("=") for part in item.split(",")]
        if any(not sep or not key.startswith("test.") for key, sep, _ in pairs):
            parser.error(f"--test-variants takes test.KEY=VALUE[,test.KEY=VALUE], got {item!r}")
        variants[item] = {key: value for key, _, value in pairs}
    grid = {"": {}}
    if args.grid:
        key, sep, values = args.grid.partition("=")
        if not sep or not key.startswith("svm.") or key in ("svm.features", "svm.scales") or not values:
            parser.error(f"--grid takes svm.KEY=V1,V2,... (not svm.features or svm.scales: the features are "
                         f"shared), got {args.grid!r}")
        grid = {f"{key}={value}": {**overrides, key: value} for value in values.split(",")}
    setup_logging()
    import dataclasses
    import tempfile

    from tqdm import tqdm

    from detector.core.paths import cache_root
    from detector.core.timing import StageTimer
    from detector.data.voc import load_voc
    from detector.engine.train import mine_classifiers, training_windows
    from detector.evaluation.bootstrap import paired_bootstrap, rank_matches
    from detector.evaluation.evaluator import VOCEvaluator
    from detector.inference.detect import detections_from_features, window_features
    from detector.model.detector import load_model
    from proposals.external import load_proposals
    from svm.features import FeatureReplay

    root = dataset_root_from_args(args)
    split = args.split or "dev_train"
    try:
        model = load_model(args.model, cache_dir=cache_root(root), overrides={"test.scorer": "softmax", **overrides})
        svm_config = model.config.replace(**{"test.scorer": "svm"})
        variant_configs = {item: svm_config.replace(**changes) for item, changes in variants.items()}  # checked now
        grid_configs = {label: model.config.replace(**changes) for label, changes in grid.items()}  # checked now
        fit = load_voc(root, f"{split}-fit", model.classes)
        holdout = load_voc(root, f"{split}-holdout", model.classes)
        config = model.config
        windows = training_windows(fit, config, not args.quiet)[:args.images]
        mined, stats, refits = {}, {}, {}
        cache_root(root).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="choose_svm_", dir=cache_root(root)) as work:
            replay = FeatureReplay(Path(work) / "fc7.float16") if args.grid else None
            for label, candidate_config in grid_configs.items():
                svms, regression_here, stats[label], miner = mine_classifiers(
                    dataclasses.replace(model, config=candidate_config), windows, not args.quiet, replay=replay)
                mined[label] = (svms, candidate_config.svm.C)
                refits[label] = {float(c): miner.refit(c) for c in args.C}
                if len(mined) == 1:  # the box regressors are fed by the first mining only
                    regression = regression_here
        if model.regressor is None:
            model.regressor = regression.fit(not args.quiet)
        found = load_proposals(root, holdout.records, config.proposals.method, config.proposals.max_side,
                               config.proposals.workers, not args.quiet, config.proposals.source)
    except (ValueError, OSError) as error:
        raise SystemExit(f"choose_svm_c.py: {error_line(error)}") from error
    scorers = {"softmax": model}
    for label, (svms, mined_c) in mined.items():
        where = f" {label}" if label else ""
        scorers[f"SVMs{where} as mined (C={mined_c:g})"] = dataclasses.replace(model, svm=svms, config=svm_config)
        if not label:
            scorers.update({f"SVMs after pass {k + 1} of {len(miner.pass_models)}": dataclasses.replace(
                model, svm=pass_model, config=svm_config) for k, pass_model in enumerate(miner.pass_models[:-1])})
        scorers.update({f"SVMs{where} refit at C={c:g}": dataclasses.replace(model, svm=refit, config=svm_config)
                        for c, refit in refits[label].items()})
    candidates = [(name, scorer) for name, scorer in scorers.items() if name.startswith("SVMs")]
    for item, changes in variants.items():
        scorers[f"softmax {item}"] = dataclasses.replace(model, config=model.config.replace(**changes))
        scorers.update({f"{name} {item}": dataclasses.replace(scorer, config=variant_configs[item])
                        for name, scorer in candidates})
    evaluators = {name: VOCEvaluator(model.classes, use_07_metric=True, coco=False) for name in scorers}
    kept = {name: [] for name in scorers}  # per image, for the bootstrap
    timer = StageTimer()
    records = [r for r in holdout.records if r.image_id in found]
    for record in tqdm(records, desc="held-out images", disable=args.quiet, unit="img"):
        boxes = found[record.image_id].astype("float32").reshape(-1, 4)
        features = window_features(model, record, boxes, timer, scales=model.test_scales)  # as detect
        for name, scorer in scorers.items():
            kept[name].append(detections_from_features(scorer, record, boxes, features, timer))
            evaluators[name].process(record, kept[name][-1])
    results = {name: evaluator.evaluate() for name, evaluator in evaluators.items()}
    versus = {}  # SVM candidate -> its difference from the softmax under the same test settings
    if args.bootstrap and records:
        ranked = {name: rank_matches(records, kept[name], len(model.classes)) for name in scorers}
        for name in scorers:
            variant = next((item for item in variants if name.endswith(f" {item}")), None)
            if name.startswith("SVMs"):
                versus[name] = paired_bootstrap(ranked[name], ranked["softmax" + (f" {variant}" if variant else "")],
                                                resamples=args.bootstrap)
    print(f"{split}-fit ({len(windows)} images) -> {split}-holdout ({len(records)} images), model {args.model}")
    width = max(len(name) for name in scorers)
    print(f"{'scorer':{width}s} mAP   " + " ".join(f"{c[:5]:>5s}" for c in model.classes))
    for name, metrics in results.items():
        print(f"{name:{width}s} {100 * metrics['mAP']:5.1f} "
              + " ".join(f"{100 * metrics['ap'][c]:5.1f}" if metrics["ap"].get(c) is not None else "    -"
                         for c in model.classes))
    if versus:
        print(f"SVMs minus the softmax under the same test settings, mAP points (paired bootstrap over the "
              f"{len(records)} held-out images, {args.bootstrap} resamples):")
        for name, difference in versus.items():
            print(f"  {name:{width}s} {difference.mAP}")
    looser = [c for c in args.C if c > config.svm.C]
    if looser:
        print(f"note: the refits at C = {', '.join(f'{c:g}' for c in looser)} are above the mining's C = "
              f"{config.svm.C:g}: their caches were mined under a tighter model, so they may rank negatives the "
              f"caches never held above their positives; mine at such a C (--set svm.C=...) to compare it fairly")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"split": split, "model": str(args.model),
                                         "mining": stats[""] if "" in stats else stats,
                                         "results": {n: {"mAP": m["mAP"], "ap": m["ap"]} for n, m in results.items()},
                                         "minus_softmax": {n: dataclasses.asdict(d.mAP) for n, d in versus.items()}},
                                        indent=1, default=float))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
