#!/usr/bin/env python
"""Run a trained detector on image files or folders (``detector.cli.predict``)."""
from detector.cli.predict import main

if __name__ == "__main__":
    main()
