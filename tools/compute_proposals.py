#!/usr/bin/env python
"""Compute (or complete) the selective search proposal cache of one split of a VOC dataset (``detector.cli.compute_proposals``)."""
from detector.cli.compute_proposals import main

if __name__ == "__main__":
    main()
