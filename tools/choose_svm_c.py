#!/usr/bin/env python
"""Choose the SVMs' C on dev_train's held-out fifth (``detector.cli.choose_svm_c``)."""
from detector.cli.choose_svm_c import main

if __name__ == "__main__":
    main()
