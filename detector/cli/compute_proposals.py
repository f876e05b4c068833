"""Compute (or complete) the selective search proposal cache of one split of a VOC dataset."""
from __future__ import annotations

import argparse
import logging
import sys

from detector.cli.common import add_proposal_arguments, error_line, proposal_cache_from_args
from detector.data.voc import load_voc
from proposals.cache import compute_proposals


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_proposal_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    try:
        dataset = load_voc(args.voc_root, args.split)
        cache = proposal_cache_from_args(args)
        report = compute_proposals(dataset.records, cache, args.workers, args.method, args.max_side)
    except (ValueError, OSError) as error:  # bad dataset, unwritable or full disk: the message names the path
        raise SystemExit(f"compute_proposals.py: {error_line(error)}") from error
    print(f"cache: {cache.folder}")
    print(f"images: {report.computed} computed, {report.skipped} already cached, {len(report.failed)} failed"
          + (f" ({', '.join(report.failed[:10])}{', ...' if len(report.failed) > 10 else ''})" if report.failed else ""))
    if report.computed:
        print(f"time: {report.wall_seconds:.1f} s wall with {report.workers} worker(s) = "
              f"{report.wall_seconds_per_image:.3f} s per image")
    sys.exit(1 if report.failed else 0)


if __name__ == "__main__":
    main()
