#!/usr/bin/env python
"""Choose ensemble.py's merge rule and calibration on held-out images (``detector.cli.choose_merge_rule``)."""
from detector.cli.choose_merge_rule import main

if __name__ == "__main__":
    main()
