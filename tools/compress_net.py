#!/usr/bin/env python
"""Compress a trained detector's fc6 with a truncated SVD (Fast R-CNN, section 3.1) (``detector.cli.compress_net``)."""
from detector.cli.compress_net import main

if __name__ == "__main__":
    main()
