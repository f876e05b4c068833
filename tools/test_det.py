#!/usr/bin/env python
"""Test a detector on a VOC split, or evaluate devkit result files already written (``detector.cli.test_det``)."""
from detector.cli.test_det import main

if __name__ == "__main__":
    main()
