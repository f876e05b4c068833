"""Which scales are worth their conv time: window shares and map coverage per scale, and the mAP
and conv seconds of every subset of the model's scales, from one pass over the images.

    python tools/scale_sets.py --voc-root ROOT --model DIR/model.pt [--split dev_train-holdout]
                               [--scales 480 576 688 864 1200] [--images N] [--threads T]
                               [--usage-only] [--json FILE]

Every window is scored at every scale once (``detector.benchmarks.scale_sets``); a subset's
detections are then exactly those ``test_det.py --scales SUBSET`` gives.  Maps are computed, timed
and not cached.  Choose a subset on training images (the default split, dev_train's held-out fifth);
measure it on dev_val once.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from detector.cli.base import HelpFormatter, error_line, tool_main
from detector.cli.common import add_dataset_arguments, dataset_from_args, setup_logging


@tool_main("scale_sets.py")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_dataset_arguments(parser, default_split="dev_train-holdout")
    parser.add_argument("--model", type=Path, required=True, help="model.pt written by tools/train_det.py")
    parser.add_argument("--scales", nargs="+", type=int, default=[480, 576, 688, 864, 1200],
                        help="the full scale set whose subsets are measured")
    parser.add_argument("--images", type=int, help="only the first N images of the split")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--margins", nargs="+", type=int, default=[0, 32, 64],
                        help="pixels added around each window when measuring the map area it covers")
    parser.add_argument("--usage-only", action="store_true",
                        help="only the window shares and map coverage per scale (no map, no scoring)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    setup_logging()
    args.split = args.split or "dev_train-holdout"  # derived from dev_train: no file of its own
    import numpy as np
    import torch
    from tqdm import tqdm

    from detector.benchmarks.modes import cached_proposals
    from detector.benchmarks.scale_sets import all_subsets, scale_usage, score_every_scale, subset_detections
    from detector.evaluation.evaluator import VOCEvaluator
    from detector.model.detector import load_model

    torch.set_num_threads(args.threads)
    try:
        model = load_model(args.model)
        model = model.with_config(model.config.replace(scales=tuple(args.scales)), None)
        dataset = dataset_from_args(args, default_split="dev_train-holdout", classes=model.classes)
        records = list(dataset.records[:args.images] if args.images else dataset.records)
        proposals, _ = cached_proposals(dataset, records, model.config, not args.quiet)
    except (ValueError, OSError) as error:
        raise SystemExit(f"scale_sets.py: {error_line(error)}") from error
    records = [r for r in records if r.image_id in proposals]
    scales = list(args.scales)
    usage = {m: scale_usage(records, proposals, scales, model.config.max_side, m) for m in args.margins}
    first = usage[args.margins[0]]
    usage_rows = [{"scale": s, "windows": float(first.windows[k] / max(first.windows.sum(), 1)),
                   "covered": {str(m): float(usage[m].covered[k] / usage[m].pixels[k]) for m in args.margins},
                   "pixels_vs_first": float(first.pixels[k] / first.pixels[0])}
                  for k, s in enumerate(scales)]
    subset_rows = []
    if not args.usage_only:
        subsets = all_subsets(len(scales))
        evaluators = {s: VOCEvaluator(model.classes, use_07_metric=True, coco=False) for s in subsets}
        conv = np.zeros(len(scales))
        head = np.zeros(len(scales))
        for record in tqdm(records, desc="every scale", disable=args.quiet, unit="img"):
            scored = score_every_scale(model, record, proposals[record.image_id])
            conv += scored.conv_seconds
            head += scored.head_seconds
            for subset in subsets:
                evaluators[subset].process(record, subset_detections(model, record, scored, subset))
        conv, head = conv / max(len(records), 1), head / max(len(records), 1)
        for k, row in enumerate(usage_rows):
            row.update(conv_seconds=float(conv[k]), head_seconds=float(head[k]))
        subset_rows = [{"scales": [scales[i] for i in s], "mAP": float(evaluators[s].evaluate()["mAP"]),
                        "conv_seconds": float(conv[list(s)].sum())} for s in subsets]
    timed = not args.usage_only
    print(f"{dataset.split}: {len(records)} images" + (f", {args.threads} thread(s), model {args.model}" if timed else ""))
    print("scale  windows  " + "  ".join(f"area(+{m}px)" for m in args.margins) + "  pixels"
          + ("  conv s  head s" if timed else ""))
    for row in usage_rows:
        print(f"{row['scale']:5d}  {100 * row['windows']:6.1f}%  "
              + "  ".join(f"{100 * v:10.1f}%" for v in row["covered"].values())
              + f"  {row['pixels_vs_first']:5.2f}x"
              + (f"  {row['conv_seconds']:6.3f}  {row['head_seconds']:6.3f}" if timed else ""))
    if subset_rows:
        print("\nsubset                        mAP   conv s/img")
        for row in sorted(subset_rows, key=lambda r: r["conv_seconds"]):
            print(f"{' '.join(map(str, row['scales'])):28s}  {100 * row['mAP']:5.1f}  {row['conv_seconds']:6.3f}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"split": dataset.split, "images": len(records), "threads": args.threads,
                                         "model": str(args.model), "scales": usage_rows,
                                         "subsets": subset_rows}, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
