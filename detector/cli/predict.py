"""Run a trained detector on your own images: detections as JSON and drawn copies of the images.

    python tools/predict.py --model runs/demo/model.pt photo.jpg more_photos/ --out predictions
                            [--score-threshold T] [--device cpu] [--proposals DIR_OR_FILE]

INPUT is any number of image files or folders (their .jpg, .jpeg, .png and .bmp files, not
recursive), of any size, read turned by their EXIF orientation.  Writes OUT/detections.jsonl as
it goes (one record per line, so an interrupted run keeps what it did) and OUT/detections.json
at the end, a list with one record per image:
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
import sys
from pathlib import Path

from detector.cli.base import HelpFormatter, add_pixel_limit_argument, tool_main, typed_name


@tool_main("predict.py")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="model.pt written by tools/train_det.py")
    parser.add_argument("inputs", nargs="*", type=Path, metavar="INPUT", help="image files or folders")
    parser.add_argument("--coco", type=Path, metavar="FILE.json",
                        help="also the images a COCO annotation file lists (with --image-dir: their folder)")
    parser.add_argument("--image-dir", type=Path, metavar="DIR", help="with --coco: the folder its file_name are in")
    parser.add_argument("--out", type=Path, required=True, help="output folder (not one holding the inputs)")
    parser.add_argument("--score-threshold", type=float,
                        help="keep detections scoring at least this (default: 0.0 for SVM, 0.5 for softmax)")
    parser.add_argument("--scorer", choices=("svm", "softmax"), help="score with the SVMs or fc8 (default: the model's)")
    parser.add_argument("--device", help="cpu or cuda (default: the model's)")
    parser.add_argument("--scales", nargs="+", type=int,
                        help="short-side scales of the conv maps, e.g. 688 (default: the model's test.scales, "
                             "else its training scales)")
    parser.add_argument("--proposals", type=Path, metavar="DIR_OR_FILE",
                        help="boxes from elsewhere, keyed by file name without suffix (proposals/external.py)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_pixel_limit_argument(parser)
    args = parser.parse_args(argv)
    if not args.inputs and args.coco is None:
        parser.error("give image files or folders, or --coco FILE.json --image-dir DIR")
    if (args.coco is None) != (args.image_dir is None):
        parser.error("--coco and --image-dir go together")

    from detector.cli.common import setup_logging
    from detector.core.folders import RECORDS_FILE, STREAM_FILE
    from detector.core.images import IMAGE_SUFFIXES
    from detector.engine.stages import check_writable
    from detector.inference.batch import check_out_folder, image_files, predict_files
    from detector.inference.predictor import Detector
    from proposals.external import ExternalProposals

    setup_logging()
    check_out_folder(args.out, args.inputs + ([args.image_dir] if args.image_dir is not None else []))
    files = image_files(args.inputs)
    if args.coco is not None:
        from detector.data.coco import read_coco

        files += [args.image_dir / str(image.get("file_name", "")) for image in read_coco(args.coco).dataset["images"]]
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {' '.join(map(str, args.inputs))}; "
                         "nothing was written")
    check_writable([args.out])
    overrides = {**({"test.scorer": args.scorer} if args.scorer else {}),
                 **({"test.scales": tuple(args.scales)} if args.scales else {})}
    detector = Detector.load(args.model, args.device, overrides or None)
    external = ExternalProposals(args.proposals) if args.proposals is not None else None
    threshold = detector.default_threshold if args.score_threshold is None else args.score_threshold
    done = predict_files(detector, files, args.out, threshold, external, progress=not args.quiet)
    if len(done.records) == 1:
        found = done.records[0]
        print(f"{found['file']}: {len(found['scores'])} detection(s) " + ", ".join(
            f"{n} {s:.2f}" for n, s in zip(found["class_names"][:5], found["scores"][:5]))
            + (" ..." if len(found["scores"]) > 5 else ""))
    if done.records:
        print(f"wrote {args.out / RECORDS_FILE} ({args.out / STREAM_FILE} line by line) and {len(done.records)} "
              f"drawn image(s) in {args.out} (score threshold {threshold:g})")
    for failed in done.failed:
        print(f"{typed_name('predict.py')}: skipped {failed}", file=sys.stderr)
    if not done.records:
        raise SystemExit("predict.py: no image could be read")


if __name__ == "__main__":
    main()
