#!/usr/bin/env python
"""Time conv maps, SVM mining and test on one process or under torchrun (``detector.cli.bench_distributed``)."""
from detector.cli.bench_distributed import main

if __name__ == "__main__":
    main()
