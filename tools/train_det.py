#!/usr/bin/env python
"""Train an SPP-net detector: proposals, conv maps, fine-tuning, SVMs, box regression -> DIR/model.pt (``detector.cli.train_det``)."""
from detector.cli.train_det import main

if __name__ == "__main__":
    main()
