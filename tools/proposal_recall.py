#!/usr/bin/env python
"""Recall of a split's GT boxes by its selective search proposals (computing missing ones first)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.voc import load_voc  # noqa: E402
from proposals.cache import ProposalCache, compute_proposals, default_cache_folder, search_timings  # noqa: E402
from proposals.recall import proposal_recall  # noqa: E402
from proposals.selective_search import MODES  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--voc-root", required=True, type=Path, help="dataset folder in the VOC layout")
    parser.add_argument("--split", required=True, help="split name (ImageSets/Main/<split>.txt)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes for missing proposals")
    parser.add_argument("--mode", choices=MODES, default="fast", help="selective search mode (default fast)")
    parser.add_argument("--max-side", type=int, default=500, help="longest side searched (default 500)")
    parser.add_argument("--iou", type=float, default=0.5, help="IoU at which a GT box counts as recalled")
    parser.add_argument("--max-proposals", type=int, help="use only each image's first N proposals")
    parser.add_argument("--cache-dir", type=Path, help="cache folder (default: the dataset's cache for this mode)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    dataset = load_voc(args.voc_root, args.split)
    cache = ProposalCache(args.cache_dir or default_cache_folder(args.voc_root, args.mode, args.max_side))
    report = compute_proposals(dataset.records, cache, args.workers, args.mode, args.max_side)
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
