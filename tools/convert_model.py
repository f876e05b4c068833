#!/usr/bin/env python
"""Convert a state file of an earlier version to the weights-only format (``detector.cli.convert_model``)."""
from detector.cli.convert_model import main

if __name__ == "__main__":
    main()
