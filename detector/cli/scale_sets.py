"""Which scales are worth their conv time: window shares and map coverage per scale, and the mAP
and conv seconds of every subset of the model's scales, from one pass over the images.

    python tools/scale_sets.py --voc-root ROOT --model DIR/model.pt [--split train-holdout]
                               [--scales 480 576 688 864 1200] [--images N] [--threads T]
                               [--usage-only] [--json FILE]

Every window is scored at every scale once (``detector.analysis.scale_sets``); a subset's
detections are then exactly those ``test_det.py --scales SUBSET`` gives.  Maps are computed, timed
and not cached.  Choose a subset on training images (the default split, the training split's held-out
fifth: ``--split NAME-holdout`` for another training split); measure it on a test split once.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from detector.cli.arguments import add_dataset_arguments
from detector.cli.base import HelpFormatter, tool_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_dataset_arguments(parser, default_split="train-holdout")
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
    args.split = args.split or "train-holdout"  # held-out training images: no file of its own
    return args


@tool_main("scale_sets.py")
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import json

    import torch

    from detector.analysis.modes import cached_proposals
    from detector.analysis.scale_sets import format_scale_sets, subset_rows, usage_rows
    from detector.cli.common import dataset_from_args, setup_logging
    from detector.model.detector import load_model

    setup_logging()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    model = model.with_config(model.config.replace(scales=tuple(args.scales)), None)
    dataset = dataset_from_args(args, default_split=args.split, classes=model.classes)
    records = list(dataset.records[:args.images] if args.images else dataset.records)
    proposals, _ = cached_proposals(dataset, records, model.config, not args.quiet)
    records = [r for r in records if r.image_id in proposals]
    rows = usage_rows(records, proposals, args.scales, model.config.max_side, args.margins)
    subsets = [] if args.usage_only else subset_rows(model, records, proposals, args.scales, rows, not args.quiet)
    timed = not args.usage_only
    print(f"{dataset.split}: {len(records)} images" + (f", {args.threads} thread(s), model {args.model}" if timed else ""))
    print(format_scale_sets(rows, subsets, args.margins, timed))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"split": dataset.split, "images": len(records), "threads": args.threads,
                                         "model": str(args.model), "scales": rows, "subsets": subsets}, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
