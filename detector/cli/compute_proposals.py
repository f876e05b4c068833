"""Compute (or complete) the selective search proposal cache of one split of a VOC dataset.

Under torchrun (torchrun --nproc_per_node N tools/compute_proposals.py ...) each rank searches its
shard of the images (with --workers processes of its own, 1 unless given) into the shared cache and
rank 0 prints the counts of all ranks."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from detector.cli.arguments import add_proposal_arguments
from detector.cli.base import HelpFormatter, elastic_record, tool_main


@elastic_record  # under torchrun, a failing rank's traceback is in the agent's report
@tool_main("compute_proposals.py")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_proposal_arguments(parser)
    args = parser.parse_args(argv)
    from detector.cli.common import process_group, proposal_cache_from_args
    from detector.core import distributed
    from detector.data.voc import load_voc
    from proposals.cache import compute_proposals

    where = f"[rank {os.environ.get('RANK', '0')}] " if distributed.env_world_size() > 1 else ""
    logging.basicConfig(level=logging.INFO, format=f"{where}%(levelname)s %(name)s: %(message)s")
    if args.workers is None:
        args.workers = 1 if distributed.env_world_size() > 1 else 2

    with process_group("cpu"):
        dataset = load_voc(args.voc_root, args.split)
        cache = proposal_cache_from_args(args)
        report = compute_proposals(distributed.shard(dataset.records), cache, args.workers, args.method,
                                   args.max_side, progress=distributed.is_main())
        report = merged_report(distributed.all_gather_objects(report))
        main_rank = distributed.is_main()
    if not main_rank:
        sys.exit(1 if report.failed else 0)
    print(f"cache: {cache.folder}")
    print(f"images: {report.computed} computed, {report.skipped} already cached, {len(report.failed)} failed"
          + (f" ({', '.join(report.failed[:10])}{', ...' if len(report.failed) > 10 else ''})" if report.failed else ""))
    if report.computed:
        print(f"time: {report.wall_seconds:.1f} s wall with {report.workers} worker(s) = "
              f"{report.wall_seconds_per_image:.3f} s per image")
    sys.exit(1 if report.failed else 0)


def merged_report(reports: list) -> object:
    """One report of every rank's (wall seconds: the slowest rank's; workers: all ranks' together)."""
    from proposals.cache import ComputeReport

    if len(reports) == 1:
        return reports[0]
    return ComputeReport(computed=sum(r.computed for r in reports), skipped=sum(r.skipped for r in reports),
                         failed=[i for r in reports for i in r.failed], workers=sum(r.workers for r in reports),
                         wall_seconds=max(r.wall_seconds for r in reports))


if __name__ == "__main__":
    main()
