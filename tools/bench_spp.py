#!/usr/bin/env python
"""Time pyramid pooling of many windows on one map: naive loops, roi_pool and pool_windows (``detector.cli.bench_spp``)."""
from detector.cli.bench_spp import main

if __name__ == "__main__":
    main()
