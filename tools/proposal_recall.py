#!/usr/bin/env python
"""Recall of a split's GT boxes by its selective search proposals (computing missing ones first) (``detector.cli.proposal_recall``)."""
from detector.cli.proposal_recall import main

if __name__ == "__main__":
    main()
