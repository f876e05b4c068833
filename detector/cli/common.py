"""What the tools do with their parsed arguments (dataset, config, proposal cache, logging, process
group); imported after parsing: it loads the library.  The arguments themselves are declared in
``detector.cli.arguments``, which imports nothing heavy."""
from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from detector.config import Config, make_config
from detector.core import distributed
from detector.data.demo import make_demo_dataset
from detector.data.voc import HOLDOUT_PARTS, VOCDataset, load_voc, split_file
from proposals.cache import ProposalCache, default_cache_folder


def proposal_cache_from_args(args: argparse.Namespace) -> ProposalCache:
    """The proposal cache named by ``add_proposal_arguments``' options."""
    return ProposalCache(args.cache_dir or default_cache_folder(args.voc_root, args.method, args.max_side))


def config_from_args(args: argparse.Namespace) -> Config:
    """The Config named by --preset, --config, --set and the shortcuts (shortcuts win)."""
    overrides = {}
    for item in args.set:
        if "=" not in item:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key] = value
    if distributed.env_world_size() > 1 and not any(key in ("workers", "proposals.workers") for key in overrides):
        overrides["proposals.workers"] = 1  # under torchrun the ranks share the images: one search each
    shortcuts = {"backbone": "backbone", "weights": "weights", "scales": "scales", "feature_path": "feature_path",
                 "seed": "seed", "device": "device", "workers": "proposals.workers"}
    for attribute, key in shortcuts.items():
        if getattr(args, attribute, None) is not None:
            overrides[key] = getattr(args, attribute)
    preset = args.preset or ("cpu" if args.voc_root is not None or getattr(args, "coco", None) is not None else "demo")
    try:
        return make_config(preset, overrides, args.config)
    except ValueError as error:
        raise SystemExit(str(error)) from error


def dataset_root_from_args(args: argparse.Namespace) -> Path:
    """The dataset folder named by --voc-root (or the image folder of --coco), or the demo dataset's
    (built when missing): what its cache is keyed by."""
    if getattr(args, "coco", None) is not None:
        if args.image_dir is None:
            raise ValueError("--coco FILE needs --image-dir DIR (the folder of its file_name)")
        return args.image_dir
    return args.voc_root if args.voc_root is not None else make_demo_dataset()


def coco_dataset_from_args(args: argparse.Namespace, classes: list[str] | None = None) -> VOCDataset:
    """The dataset of --coco FILE --image-dir DIR; --split, when given, is the file's name (its stem) or
    that name with -fit / -holdout (its held-out fifth left out, or alone)."""
    from detector.data.coco import load_coco

    if args.image_dir is None or args.voc_root is not None:
        raise ValueError("--coco FILE needs --image-dir DIR (the folder of its file_name), and no --voc-root")
    dataset = load_coco(args.coco, args.image_dir, classes or args.classes)
    if args.split in (None, dataset.split):
        return dataset
    base, _, part = args.split.rpartition("-")
    if base != dataset.split or part not in HOLDOUT_PARTS:
        raise ValueError(f"with --coco the split is the file's name ({dataset.split}), or {dataset.split}-fit / "
                         f"{dataset.split}-holdout, not {args.split!r}")
    return dataset.part(part)


def dataset_from_args(args: argparse.Namespace, default_split: str,
                      classes: list[str] | None = None) -> VOCDataset:
    """Load the split named by the arguments (building the demo dataset when none is named); with
    no --split, ``default_split`` ("train" to train, "test" to test), refused by name when the
    dataset has no such split (a test never falls back to training images).  With --coco the
    dataset is the COCO file's (``coco_dataset_from_args``)."""
    if getattr(args, "coco", None) is not None:
        return coco_dataset_from_args(args, classes)
    root = dataset_root_from_args(args)
    split = args.split or default_split
    if args.split is None and not split_file(root, split).is_file():
        found = sorted(p.stem for p in split_file(root, split).parent.glob("*.txt"))
        raise SystemExit(f"{root} has no {split!r} split ({split_file(root, split)}); name one with --split"
                         + (f" ({', '.join(found)})" if found else ""))
    try:
        return load_voc(root, split, classes or args.classes)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"cannot load {root} split {split!r}: {error}") from error


def setup_logging(verbose: bool = False) -> None:
    """Log lines to stderr; under ``torchrun`` each line names its rank."""
    where = f"[rank {os.environ.get('RANK', '0')}] " if distributed.env_world_size() > 1 else ""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format=f"%(asctime)s {where}%(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


@contextmanager
def process_group(device: str | None) -> Iterator[None]:
    """Run the block in the process group ``torchrun`` describes (none for a plain process, where
    nothing changes), leaving the group at the end; an exception is logged as ``rank R failed:
    <cause>`` before it propagates (``detector.core.distributed``)."""
    with distributed.failure_logged():
        distributed.init_from_env(device)
        try:
            yield
        finally:
            distributed.shutdown()
