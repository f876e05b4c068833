"""Run a trained detector on your own images: detections as JSON and drawn copies of the images.

    python tools/predict.py --model runs/demo/model.pt photo.jpg more_photos/ --out predictions
                            [--score-threshold T] [--device cpu] [--proposals DIR_OR_FILE]

INPUT is any number of image files or folders (their .jpg, .jpeg, .png and .bmp files, not
recursive), of any size.  Writes OUT/detections.json, a list with one record per image:
``{"file", "width", "height", "boxes": [[x1, y1, x2, y2], ...], "scores": [...],
"class_names": [...], "labels": [...]}`` (boxes in 0-based continuous pixels, best first), and
a drawn copy of every image, OUT/<name>.jpg (.png for PNG inputs): boxes in one colour per class,
labelled with the class name and score.  The default threshold depends on the model's scorer
(0.0 for SVM margins, 0.5 for softmax probabilities; see detector/inference/predictor.py).
``--proposals`` gives boxes from elsewhere (proposals/external.py's format), keyed by the file
name without its suffix.  An unreadable file is reported by name and skipped; the exit status
is non-zero only when no image could be read.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from detector.cli.common import error_line, setup_logging, tool_main
from detector.core.images import ImageReadError, load_image
from detector.core.io import write_json_atomic
from detector.engine.stages import check_writable
from detector.inference.predictor import Detector
from detector.visualization.draw import draw_detections, save_image
from proposals.external import ExternalProposals

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
log = logging.getLogger("predict")


def image_files(inputs: list[Path]) -> list[Path]:
    """The image files named by ``inputs`` (files as given, folders' images sorted by name)."""
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            files.extend(sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            files.append(item)
    return files


def drawn_name(path: Path, taken: set[str]) -> str:
    """Output file name of a drawn image: its stem, .png for PNG inputs, .jpg otherwise; made
    unique when two inputs share a stem."""
    suffix = ".png" if path.suffix.lower() == ".png" else ".jpg"
    name, number = f"{path.stem}{suffix}", 1
    while name in taken or name == "detections.json":
        name, number = f"{path.stem}_{number}{suffix}", number + 1
    taken.add(name)
    return name


def check_out_folder(out: Path, inputs: list[Path]) -> None:
    """Refuse an ``out`` that is an input folder, the folder of an input file or holds an input (the
    drawn copies would replace the photos), then check it is writable; before any work."""
    resolved = out.resolve()
    for item in inputs:
        item = item.resolve()
        folder = item if item.is_dir() else item.parent
        if folder == resolved or resolved in item.parents:
            raise ValueError(f"--out {out} holds the input {item}: its drawn copies would replace the "
                             "images; write the predictions to another folder")
    check_writable([out])


@tool_main("predict.py")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="model.pt written by tools/train_det.py")
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files or folders")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--score-threshold", type=float,
                        help="keep detections scoring at least this (default: 0.0 for SVM, 0.5 for softmax)")
    parser.add_argument("--scorer", choices=("svm", "softmax"), help="score with the SVMs or fc8 (default: the model's)")
    parser.add_argument("--device", help="cpu or cuda (default: the model's)")
    parser.add_argument("--proposals", type=Path, metavar="DIR_OR_FILE",
                        help="boxes from elsewhere, keyed by file name without suffix (proposals/external.py)")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        check_out_folder(args.out, args.inputs)
        detector = Detector.load(args.model, args.device, {"test.scorer": args.scorer} if args.scorer else None)
        external = ExternalProposals(args.proposals) if args.proposals is not None else None
    except (ValueError, OSError) as error:  # bad input, unwritable or full disk: the message names the file
        raise SystemExit(f"predict.py: {error_line(error)}") from error
    files = image_files(args.inputs)
    threshold = detector.default_threshold if args.score_threshold is None else args.score_threshold
    records, failed, taken = [], [], set()
    for path in files:
        try:
            image = load_image(path, exif_orientation=True)
            height, width = image.shape[:2]
            boxes = external.load(path.stem, width, height) if external is not None else None
            found = detector.predict(image, threshold, proposals=boxes)
        except (ImageReadError, ValueError) as error:
            print(f"predict.py: skipping {path}: {error}", file=sys.stderr)
            failed.append(str(path))
            continue
        name = drawn_name(path, taken)
        try:
            save_image(args.out / name, draw_detections(image, found.boxes, found.scores, found.labels,
                                                        detector.classes))
        except OSError as error:  # full disk, folder removed: stop, naming the file
            raise SystemExit(f"predict.py: {error_line(error)}") from error
        records.append({"file": str(path), "drawn": name, **found.to_dict()})
        print(f"{path}: {len(found)} detection(s) " + ", ".join(
            f"{n} {s:.2f}" for n, s in zip(found.class_names[:5], found.scores[:5])) + (" ..." if len(found) > 5 else ""))
    if records:
        try:
            write_json_atomic(args.out / "detections.json", records)
        except OSError as error:
            raise SystemExit(f"predict.py: {error_line(error)}") from error
        print(f"wrote {args.out / 'detections.json'} and {len(records)} drawn image(s) in {args.out} "
              f"(score threshold {threshold:g})")
    if failed:
        print(f"predict.py: {len(failed)} file(s) could not be read: {', '.join(failed)}", file=sys.stderr)
    if not records:
        raise SystemExit("predict.py: no image could be read" if files else "predict.py: no image files in the inputs")


if __name__ == "__main__":
    main()
