"""Time SPP-net against R-CNN on the same trunk, head and windows, at 1 and at 5 scales.

    python tools/benchmark.py [--voc-root ROOT --split SPLIT] [--images N] [--model DIR/model.pt]
                              [--json FILE] [--threads T] [--fc6-rank R]
                              [--scale-sets 688 480,576,688,864,1200 ...] [--no-rcnn]

Prints, per scale set, seconds per image for every stage of both modes, the feature-stage and
whole-test speed-ups beside the pixel ratio, peak memory and conv-map cache bytes per image.
Without --model an untrained head is used (trunk, pooling and fc timings do not depend on its
weights; scoring, regression and NMS do).  With no --voc-root it uses the demo dataset's test split.
With --fc6-rank R, SPP mode is also timed with fc6 compressed to rank R (tools/compress_net.py),
side by side with the exact head.  --scale-sets names the scale sets to time (default: 688 and the
paper's five); each block after the first gives its whole test, proposals included, against the
first's.  --no-rcnn leaves R-CNN mode out (about a minute per image on one thread).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from detector.cli.arguments import add_dataset_arguments
from detector.cli.base import HelpFormatter, tool_main


@tool_main("benchmark.py")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_dataset_arguments(parser, default_split="test")
    parser.add_argument("--images", type=int, default=10,
                        help="images to time (default 10, the first of the split)")
    parser.add_argument("--model", type=Path,
                        help="model.pt written by tools/train_det.py (default: untrained head)")
    parser.add_argument("--json", type=Path,
                        help="also write the tables as JSON, keyed by the number of scales")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both modes (default 1)")
    parser.add_argument("--fc6-rank", type=int,
                        help="also time SPP mode with fc6 compressed to this rank (truncated SVD)")
    parser.add_argument("--scale-sets", nargs="+", metavar="S[,S...]",
                        help="scale sets to time, each comma-separated (default: 688 480,576,688,864,1200)")
    parser.add_argument("--no-rcnn", action="store_true", help="time SPP mode only (no R-CNN mode)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.images < 1 or args.threads < 1:
        parser.error("--images and --threads must be at least 1")
    scale_sets = None
    if args.scale_sets:
        try:
            scale_sets = {text: tuple(int(v) for v in text.split(",")) for text in args.scale_sets}
        except ValueError:
            parser.error(f"--scale-sets takes comma-separated integers, got {' '.join(args.scale_sets)}")
        if any(s < 1 for scales in scale_sets.values() for s in scales):
            parser.error("scales must be positive")
    from detector.analysis.modes import benchmark_modes, format_benchmark, fresh_model
    from detector.cli.common import dataset_from_args, setup_logging
    from detector.config import make_config
    from detector.core.runtime import keep_freed_memory
    from detector.model.detector import load_model

    setup_logging()
    keep_freed_memory()
    model = load_model(args.model) if args.model is not None else None
    dataset = dataset_from_args(args, default_split="test", classes=model.classes if model is not None else None)
    if model is None:
        model = fresh_model(dataset.classes, make_config("cpu"))
    results = benchmark_modes(model, dataset, args.images, threads=args.threads, progress=not args.quiet,
                              fc6_rank=args.fc6_rank, scale_sets=scale_sets, rcnn=not args.no_rcnn)
    print(format_benchmark(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
