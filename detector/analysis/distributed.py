"""Wall seconds of the stages that ``torchrun`` splits across processes, on the images of a split.

Run it once as one process (``OMP_NUM_THREADS=2 python tools/bench_distributed.py ...``) and once
under ``torchrun --nproc_per_node 2`` (one thread per rank) to compare "1 process x 2 threads"
with "2 processes x 1 thread" on the same images and model.  Stages, each timed from a barrier to
a barrier (so the figure is the slowest rank's):

- ``conv_maps``: the conv maps of every image (one scale set, no flip) computed into a fresh cache
  folder ``work_dir/conv_maps`` (emptied at the start, so nothing is read from an earlier run);
- ``svm_mining``: the SVM stage of training (fc7 of every window of every image, hard negative
  mining, box-regression pairs) on these images with the model's fine-tuned head, then the
  regressors' fit; the maps are now cached, as in training;
- ``test``: detection on every image (maps cached) gathered to rank 0, and its evaluation.

Nothing is asserted about time: the figures are printed (and returned) for a person to compare.
"""
from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from detector.core import distributed
from detector.data.voc import VOCDataset
from detector.engine.test import run_detector
from detector.engine.train import train_classifiers, training_windows
from detector.evaluation.evaluator import VOCEvaluator
from detector.model.detector import load_model


@contextmanager
def _timed(stage: str, seconds: dict[str, float]) -> Iterator[None]:
    """Put the wall seconds of the block, from a barrier to a barrier, in ``seconds[stage]``."""
    distributed.barrier()
    start = time.perf_counter()
    yield
    distributed.barrier()
    seconds[stage] = time.perf_counter() - start


def bench_distributed(model_path: Path, dataset: VOCDataset, work_dir: Path, progress: bool = True) -> dict:
    """Time conv maps, SVM mining and test on ``dataset`` (module docstring); every rank returns the
    same dict: processes, threads per process, images, seconds per stage, and the test's mAP."""
    maps_root = Path(work_dir) / "conv_maps"
    if distributed.is_main() and maps_root.exists():
        shutil.rmtree(maps_root)
    distributed.barrier()
    model = load_model(model_path, None, maps_root)
    seconds: dict[str, float] = {}
    with _timed("proposals", seconds):  # from the dataset's cache (computed, split across ranks, if missing)
        train = training_windows(dataset, model.config, progress and distributed.is_main())
    with torch.inference_mode():  # warm-up: the trunk's first call sets up its kernels, outside the timing
        side = min(model.config.scales)
        model.backbone(torch.zeros(1, 3, side, side, device=next(model.backbone.parameters()).device))
    with _timed("conv_maps", seconds):
        model.conv_maps.precompute([w.record for w in train], model.config.scales, (False,),
                                   progress and distributed.is_main(), desc="conv maps (bench)")
    with _timed("svm_mining", seconds):
        _, regression, _ = train_classifiers(model, train, progress)
        regression.fit(progress and distributed.is_main())
    evaluator = VOCEvaluator(model.classes)
    with _timed("test", seconds):
        run_detector(model, dataset, evaluator, progress)
        metrics = evaluator.evaluate() if distributed.is_main() else None
    mean_ap = distributed.broadcast_from_main(None if metrics is None else metrics["mAP"])
    return {"processes": distributed.world_size(), "threads_per_process": torch.get_num_threads(),
            "images": len(dataset.records), "split": dataset.split, "seconds": seconds, "test_mAP": mean_ap}


def format_bench(result: dict) -> str:
    """The result as a small table."""
    lines = [(f"{result['processes']} process(es) x {result['threads_per_process']} thread(s), "
              f"{result['images']} images of {result['split']}")]
    for stage, seconds in result["seconds"].items():
        lines.append(f"  {stage:>11}: {seconds:8.1f} s  ({seconds / max(result['images'], 1):.3f} s per image)")
    lines.append(f"  test mAP {result['test_mAP']}")
    return "\n".join(lines)
