"""Build (or reuse) the embedded demo dataset in VOC layout and say where it is."""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from detector.cli.base import HelpFormatter, tool_main


@tool_main("make_demo_data.py")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--root", type=Path, default=None,
                        help="output folder (default: the demo's folder in the cache, $SPPNET_CACHE/demo_voc)")
    parser.add_argument("--train", type=int, default=240, help="number of training images")
    parser.add_argument("--test", type=int, default=120, help="number of test images")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    parser.add_argument("--format", choices=("voc", "coco"), default="voc",
                        help="voc: the VOC layout; coco: also ROOT/coco/train.json and test.json, COCO annotation "
                             "files of the same images (in ROOT/JPEGImages) and boxes (default voc)")
    args = parser.parse_args(argv)
    import numpy as np

    from detector.data.demo import DEMO_CLASSES, make_demo_dataset
    from detector.data.voc import load_voc

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    started = time.perf_counter()
    root = make_demo_dataset(args.root, n_train=args.train, n_test=args.test, seed=args.seed)
    print(f"demo dataset at {root} ({time.perf_counter() - started:.1f} s)")
    for split in ("train", "test"):
        dataset = load_voc(root, split, DEMO_CLASSES)
        labels = np.concatenate([record.labels for record in dataset.records])
        per_class = dict(zip(dataset.classes, np.bincount(labels, minlength=len(dataset.classes)).tolist()))
        print(f"  {split}: {len(dataset.records)} images, {len(labels)} objects, per class {per_class}")
        if args.format == "coco":  # the classes in the order the VOC reader finds them: the same labels
            from detector.data.coco import write_coco

            found = load_voc(root, split, sorted(DEMO_CLASSES))
            path = write_coco(found, root / "coco" / f"{split}.json", root / "JPEGImages")
            print(f"  wrote {path} (--coco {path} --image-dir {root / 'JPEGImages'})")


if __name__ == "__main__":
    main()
