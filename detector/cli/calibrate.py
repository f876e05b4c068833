"""Give a trained model calibrated scores, fitted on its (or its twin's) detections on held-out images.

    python tools/calibrate.py --model RUN/model.pt --held-out RESULTS --voc-root ROOT --split SPLIT
                              --out RUN/model_calibrated.pt [--method platt|isotonic] [--apply-to DIR ...]

RESULTS is a test_det.py result folder of SPLIT, images the scoring model was not trained on: for a
model trained on NAME, the results of its twin (the same command with --split NAME-fit) on
NAME-holdout.  Per class, a map from the raw score to the probability that a detection is right is
fitted with scikit-learn (platt: logistic regression; isotonic: isotonic regression) and stored in
the new model file; test_det.py then writes calibrated scores in RESULTS_OF_A_TEST/calibrated, and
ensemble.py merges on them.  --apply-to gives result folders this model already made their
calibrated copy without testing again.  (train_det.py --calibrate does all of it as a stage.)
"""
from __future__ import annotations

import argparse
from pathlib import Path

from detector.cli.base import HelpFormatter, tool_main

METHODS = ("platt", "isotonic")  # detector.model.calibration.METHODS


@tool_main("calibrate.py")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="model.pt to calibrate")
    parser.add_argument("--held-out", type=Path, required=True,
                        help="result folder of test_det.py on images the scoring model was not trained on")
    parser.add_argument("--voc-root", type=Path, required=True, help="the dataset the held-out results were made on")
    parser.add_argument("--split", required=True, help="the split of the held-out results")
    parser.add_argument("--out", type=Path, required=True, help="the calibrated model file to write (a new file)")
    parser.add_argument("--method", choices=METHODS, default="platt",
                        help="platt: logistic regression on the score; isotonic: isotonic regression (default platt)")
    parser.add_argument("--apply-to", nargs="+", type=Path, default=[], metavar="DIR",
                        help="result folders this model made: write their calibrated copy (DIR/calibrated)")
    args = parser.parse_args(argv)
    from detector.cli.common import setup_logging
    from detector.engine.calibrate import calibrate_model

    setup_logging()
    model = calibrate_model(args.model, args.held_out, args.voc_root, args.split, args.out, args.method,
                            args.apply_to)
    source = model.calibration.source
    own = sum(1 for name in model.calibration.maps if name != "__all__")
    print(f"wrote {args.out}: {args.method} maps of {own} classes fitted on {source['detections']} detections "
          f"of {source['images']} images ({args.held_out})"
          + (f"; {', '.join(source['pooled_classes'])} use the map of all classes" if source["pooled_classes"] else ""))
    for folder in args.apply_to:
        print(f"wrote {folder / 'calibrated'}")


if __name__ == "__main__":
    main()
