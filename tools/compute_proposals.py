#!/usr/bin/env python
"""Compute (or complete) the selective search proposal cache of one split of a VOC dataset."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.voc import load_voc  # noqa: E402
from proposals.cache import ProposalCache, compute_proposals, default_cache_folder  # noqa: E402
from proposals.selective_search import MODES  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--voc-root", required=True, type=Path, help="dataset folder in the VOC layout")
    parser.add_argument("--split", required=True, help="split name (ImageSets/Main/<split>.txt)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--mode", choices=MODES, default="fast", help="selective search mode (default fast)")
    parser.add_argument("--max-side", type=int, default=500, help="longest side searched (default 500)")
    parser.add_argument("--cache-dir", type=Path, help="cache folder (default: the dataset's cache for this mode)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    dataset = load_voc(args.voc_root, args.split)
    cache = ProposalCache(args.cache_dir or default_cache_folder(args.voc_root, args.mode, args.max_side))
    report = compute_proposals(dataset.records, cache, args.workers, args.mode, args.max_side)
    print(f"cache: {cache.folder}")
    print(f"images: {report.computed} computed, {report.skipped} already cached, {len(report.failed)} failed"
          + (f" ({', '.join(report.failed[:10])}{', ...' if len(report.failed) > 10 else ''})" if report.failed else ""))
    if report.computed:
        print(f"time: {report.wall_seconds:.1f} s wall with {report.workers} worker(s) = "
              f"{report.wall_seconds_per_image:.3f} s per image")
    sys.exit(1 if report.failed else 0)


if __name__ == "__main__":
    main()
