"""Recall of a split's GT boxes by its selective search proposals (computing missing ones first)."""
from __future__ import annotations

import argparse
import logging

from detector.cli.arguments import add_proposal_arguments
from detector.cli.base import HelpFormatter, tool_main


@tool_main("proposal_recall.py")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_proposal_arguments(parser)
    parser.add_argument("--iou", type=float, default=0.5, help="IoU at which a GT box counts as recalled")
    parser.add_argument("--max-proposals", type=int, help="use only each image's first N proposals")
    args = parser.parse_args(argv)
    from detector.cli.common import proposal_cache_from_args
    from detector.data.voc import load_voc
    from proposals.cache import compute_proposals, search_timings
    from proposals.recall import proposal_recall

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    dataset = load_voc(args.voc_root, args.split)
    cache = proposal_cache_from_args(args)
    report = compute_proposals(dataset.records, cache, 2 if args.workers is None else args.workers, args.method,
                               args.max_side)
    stats = proposal_recall(dataset.records, cache, args.iou, args.max_proposals)
    timings = search_timings(dataset.records, cache)

    print(f"cache: {cache.folder}")
    print(f"{args.split}: {stats.num_images} images, {stats.num_gt} GT boxes (difficult included), "
          f"{stats.missing_images} images without proposals")
    print(f"recall at IoU {args.iou}: {stats.recall:.4f} ({stats.num_recalled}/{stats.num_gt})")
    print(f"proposals per image: {stats.mean_proposals:.1f}")
    print(f"selective search per image, one worker (stored for {timings.images} images): "
          f"{timings.wall_seconds:.3f} s wall, {timings.cpu_seconds:.3f} s CPU")
    if report.computed:
        print(f"this run: {report.computed} images computed in {report.wall_seconds:.1f} s wall with "
              f"{report.workers} worker(s) = {report.wall_seconds_per_image:.3f} s per image")
    else:
        print("this run: nothing to compute (all cached)")


if __name__ == "__main__":
    main()
