#!/usr/bin/env python
"""fc8 window classification accuracy of a trained model on held-out images (JSON to stdout) (``detector.cli.window_accuracy``)."""
from detector.cli.window_accuracy import main

if __name__ == "__main__":
    main()
