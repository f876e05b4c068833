"""Time pyramid pooling of many windows on one map: naive loops, roi_pool and pool_windows."""
from __future__ import annotations

import argparse

from detector.cli.base import HelpFormatter, tool_main


@tool_main("bench_spp.py")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--channels", type=int, default=112,
                        help="map channels (default 112: efficientnet_lite0 at stride 16)")
    parser.add_argument("--height", type=int, default=43, help="map height (default 43: 688 px at stride 16)")
    parser.add_argument("--width", type=int, default=57, help="map width (default 57)")
    parser.add_argument("--windows", type=int, default=2000, help="random windows (default 2000)")
    parser.add_argument("--max-side", type=int, default=30, help="largest window side in cells (default 30)")
    parser.add_argument("--levels", type=int, nargs="+", default=[6, 3, 2, 1], help="pyramid levels")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method; the median is kept")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random map and windows (default 0)")
    args = parser.parse_args(argv)
    import torch

    from detector.analysis.spp_bench import benchmark_pool_windows
    from detector.core.runtime import keep_freed_memory

    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as train_det.py and test_det.py run; pool_windows_fresh_pages shows the other case
    seconds = benchmark_pool_windows(args.channels, args.height, args.width, args.windows, args.max_side,
                                     args.repeats, tuple(args.levels), args.seed)
    print(f"{args.windows} windows on a {args.channels} x {args.height} x {args.width} float16 map, "
          f"levels {tuple(args.levels)}, {args.threads} thread(s), median of {args.repeats}:")
    fast = seconds["pool_windows"]
    for name, value in seconds.items():
        print(f"  {name:<24} {value * 1000:9.1f} ms   pool_windows is {value / fast:6.1f}x faster")
    print(f"speed-up of pool_windows over the naive loop: {seconds['naive'] / fast:.1f}x "
          f"({seconds['naive'] / seconds['pool_windows_fresh_pages']:.1f}x with fresh pages)")


if __name__ == "__main__":
    main()
