r"""Time the stages split across processes (conv maps, SVM mining, test) on the first N images of a split.

    OMP_NUM_THREADS=2 python tools/bench_distributed.py --voc-root ROOT --split dev_val --images 100 \
        --model runs/x/model.pt --out runs/bench_1x2
    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 tools/bench_distributed.py --voc-root ROOT --split dev_val \
        --images 100 --model runs/x/model.pt --out runs/bench_2x1

Prints the wall seconds of each stage (from a barrier to a barrier) and writes them to OUT/bench.json
(rank 0).  OUT/conv_maps is a fresh conv-map cache, emptied at each start (detector.analysis.distributed).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from detector.cli.arguments import add_dataset_arguments
from detector.cli.base import HelpFormatter, elastic_record, tool_main


@elastic_record  # under torchrun, a failing rank's traceback is in the agent's report
@tool_main("bench_distributed.py")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_dataset_arguments(parser, default_split="test")
    parser.add_argument("--model", type=Path, required=True, help="model.pt written by tools/train_det.py")
    parser.add_argument("--images", type=int, default=100, help="the first N images of the split (default 100)")
    parser.add_argument("--out", type=Path, required=True,
                        help="work folder (a fresh conv-map cache, bench.json); shared by every rank")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    import torch

    from detector.analysis.distributed import bench_distributed, format_bench
    from detector.cli.common import dataset_from_args, process_group, setup_logging
    from detector.config import config_from_dict
    from detector.core import distributed
    from detector.core.io import write_json_atomic
    from detector.core.runtime import keep_freed_memory
    from detector.model.detector import read_model_file

    setup_logging()
    keep_freed_memory()
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads and threads.isdigit():
        torch.set_num_threads(int(threads))
    state = read_model_file(args.model)
    with process_group(config_from_dict(state["config"]).device):
        dataset = dataset_from_args(args, default_split="test", classes=list(state["classes"])).first(args.images)
        result = bench_distributed(args.model, dataset, args.out, progress=not args.quiet)
        if distributed.is_main():
            write_json_atomic(args.out / "bench.json", result)
            print(format_bench(result))


if __name__ == "__main__":
    main()
