#!/usr/bin/env python
"""The mAP and conv seconds of every subset of a scale set, and per-scale window shares (``detector.cli.scale_sets``)."""
from detector.cli.scale_sets import main

if __name__ == "__main__":
    main()
