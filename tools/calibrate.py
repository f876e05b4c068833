#!/usr/bin/env python
"""Give a trained model calibrated scores (``detector.cli.calibrate``)."""
from detector.cli.calibrate import main

if __name__ == "__main__":
    main()
