#!/usr/bin/env python
"""Time SPP-net against R-CNN on the same trunk, head and windows, at 1 and at 5 scales (``detector.cli.benchmark``)."""
from detector.cli.benchmark import main

if __name__ == "__main__":
    main()
