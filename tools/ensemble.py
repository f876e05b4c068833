#!/usr/bin/env python
"""Combine the detections of two or more models (devkit result folders) per class through NMS 0.3 (``detector.cli.ensemble``)."""
from detector.cli.ensemble import main

if __name__ == "__main__":
    main()
