#!/usr/bin/env python
"""Build (or reuse) the embedded demo dataset in VOC layout and say where it is (``detector.cli.make_demo_data``)."""
from detector.cli.make_demo_data import main

if __name__ == "__main__":
    main()
