"""Shared fixtures: a tiny demo dataset and a detector trained on it once per test session."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detector.config import make_config
from detector.data.demo import make_demo_dataset
from detector.data.voc import load_voc
from detector.engine.train import train_detector

# The tiny runs keep the small trunk and the SVM scorer: the cpu preset's dilated Lite2 and fc8
# softmax are sized for VOC, and these tests exercise every stage, the SVMs included, in seconds.
SMALL_TRUNK = {"backbone": "efficientnet_lite0", "test.scorer": "svm"}

# Settings small enough for a stage test on the tiny demo: one scale, narrow fc, a few iterations.
TINY = {**SMALL_TRUNK, "scales": (224,), "fc_width": 64, "finetune.iterations": 20, "finetune.lr_steps": (15,),
        "finetune.checkpoint_every": 10, "proposals.max_side": 160, "proposals.workers": 1,
        "sampling.windows_per_image": 32}


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    """A 6 + 4 image demo dataset with its own cache folder (``SPPNET_CACHE``), per test module."""
    cache = tmp_path_factory.mktemp("cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("SPPNET_CACHE", str(cache))
    root = make_demo_dataset(cache / "demo", n_train=6, n_test=4, seed=3)
    yield root
    patch.undo()


# The test pipeline's tiny setting, trained long enough to find the shapes of its own training
# images (measured: the top detection of each of the 6 images is a GT shape of its class, IoU >= 0.63;
# 30 iterations of 64-wide layers leave every SVM at its bias).
TRAINED_TINY = {**SMALL_TRUNK, "scales": (224,), "fc_width": 128, "finetune.iterations": 300, "finetune.lr_steps": (250,),
                "finetune.batch_size": 32, "finetune.checkpoint_every": 100, "finetune.history_every": 50,
                "proposals.max_side": 160, "proposals.workers": 1, "sampling.windows_per_image": 32, "svm.C": 0.1}


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory) -> tuple[Path, Path, Path]:
    """``(dataset root, run folder, cache folder)`` of a detector trained on 6 demo images (about
    30 s on one core); set ``SPPNET_CACHE`` to the cache folder to reuse its proposals and maps.

    Training runs on one thread: these fc layers gain nothing from two, and lose several times
    their time when the CPU is shared."""
    cache = tmp_path_factory.mktemp("tiny_cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("SPPNET_CACHE", str(cache))
    root = make_demo_dataset(cache / "demo", n_train=6, n_test=4, seed=3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = tmp_path_factory.mktemp("tiny_run")
        train_detector(load_voc(root, "train"), make_config("cpu", TRAINED_TINY), run, progress=False)
    finally:
        torch.set_num_threads(threads)
        patch.undo()
    return root, run, cache
