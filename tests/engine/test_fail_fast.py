"""Bad settings and paths stop a run before any long work, in one line naming the value or path;
a diverging fine-tuning stops at the iteration and is never saved as complete; caches follow the
image bytes."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY

from detector.cli import train_det
from detector.config import make_config
from detector.core.images import image_digest, load_image
from detector.core.paths import cache_root
from detector.data.voc import load_voc
from detector.engine.train import train_detector, training_windows
from detector.features import convmaps
from detector.features.backbones import build_backbone
from detector.features.convmaps import ConvMapCache, ConvMapProvider
from detector.head.finetune import read_finetune_checkpoint
from detector.model.detector import conv_map_folder
from proposals.cache import ProposalCache, default_cache_folder

ROOT = Path(__file__).resolve().parents[2]


def train_tool(root, *arguments):
    """Run tools/train_det.py on ``root``; returns (return code, stdout + stderr)."""
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "train_det.py"), "--voc-root", str(root),
                           "--quiet", *arguments], capture_output=True, text=True, env=os.environ.copy(),
                          timeout=300)
    return done.returncode, done.stdout + done.stderr


def test_bad_paths_and_settings_are_one_line_messages_before_any_work(tiny_demo, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    searched = default_cache_folder(tiny_demo, "fast", 160)
    small = ["proposals.max_side=160", "proposals.workers=1"]  # one --set: a second one replaces the first
    cases = {
        ("--out", str(blocker / "run"), "--set", *small): f"cannot write in {blocker / 'run'}: Not a directory",
        ("--backbone", "nope", "--set", *small): "unknown backbone 'nope'",
        ("--scales", "1", "--set", *small): "scale 1 is too small for backbone 'efficientnet_lite2'",
        ("--scales", "688", "100000", "--set", *small): "scale 100000 is above max_side 2000",
        ("--set", "finetune.lr=nan", *small): "finetune.lr must be finite",
        ("--set", "finetune.batch_size=0", *small): "finetune.batch_size",
        ("--set", "finetune.checkpoint_every=0", *small): "finetune.checkpoint_every",
    }
    if not torch.cuda.is_available():
        cases[("--device", "cuda", "--set", *small)] = "no CUDA GPU is available here"
    for arguments, message in cases.items():  # in-process: the same main() the tool runs
        out = [] if "--out" in arguments else ["--out", str(tmp_path / "run")]
        with pytest.raises(SystemExit) as stopped:
            train_det.main(["--voc-root", str(tiny_demo), "--quiet", *arguments, *out])
        assert message in str(stopped.value) and "\n" not in str(stopped.value), (arguments, stopped.value)
    rc, output = train_tool(tiny_demo, "--out", str(blocker / "run"), "--set", *small)  # the whole tool
    assert rc != 0 and output.strip().splitlines()[-1] == f"train_det.py: cannot write in {blocker / 'run'}: " \
        "Not a directory" and "Traceback" not in output
    assert not searched.exists()  # no selective search ran for any of them


def test_a_diverging_loss_stops_at_its_iteration_and_is_never_complete(tiny_demo, tmp_path, monkeypatch):
    dataset = load_voc(tiny_demo, "train")
    real = F.cross_entropy
    calls = {"n": 0}

    def diverging(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] >= 13 else loss

    monkeypatch.setattr(F, "cross_entropy", diverging)
    with pytest.raises(ValueError, match="diverged at iteration 13: loss is nan.*finetune.pt keeps its last finite"):
        train_detector(dataset, make_config("cpu", TINY), tmp_path / "run", progress=False)
    calls["n"] = 0  # diverging before the first checkpoint: no file to name
    with pytest.raises(ValueError, match="diverged at iteration 13: .*no checkpoint was written yet"):
        train_detector(dataset, make_config("cpu", {**TINY, "finetune.checkpoint_every": 15}), tmp_path / "early",
                       progress=False)
    assert not (tmp_path / "early" / "finetune.pt").exists()
    state = read_finetune_checkpoint(tmp_path / "run" / "finetune.pt")
    assert state["iteration"] == 10 and all(torch.isfinite(t).all() for t in state["head"].values())
    assert not (tmp_path / "run" / "model.pt").exists()
    monkeypatch.setattr(F, "cross_entropy", real)
    train_detector(dataset, make_config("cpu", TINY), tmp_path / "run", progress=False)  # resumes at 10
    assert read_finetune_checkpoint(tmp_path / "run" / "finetune.pt")["iteration"] == 20


def test_replaced_or_edited_images_are_recomputed_never_served(tiny_demo, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(tiny_demo, root)
    config = make_config("cpu", TINY)
    dataset = load_voc(root, "train")
    record = dataset.records[0]
    backbone = build_backbone(config.backbone)
    provider = ConvMapProvider(backbone, ConvMapCache(conv_map_folder(cache_root(root), backbone, config)),
                               config.max_side)
    training_windows(dataset, config, progress=False)
    first = provider.get(record, 224, False)
    assert first.image_size == (record.width, record.height) and first.image_digest == image_digest(record.path)
    proposals = ProposalCache(default_cache_folder(root, "fast", 160))
    assert proposals.read(record.image_id).image_digest == image_digest(record.path)

    time.sleep(0.05)
    pixels = load_image(record.path)
    cv2.imwrite(str(record.path), np.ascontiguousarray(255 - pixels[..., ::-1]))  # edited in place, same size
    edited = load_voc(root, "train").records[0]
    assert (edited.width, edited.height) == (record.width, record.height)
    again = provider.get(edited, 224, False)
    assert again.image_digest == image_digest(edited.path) != first.image_digest
    assert not np.array_equal(again.features, first.features)
    training_windows(load_voc(root, "train"), config, progress=False)
    assert proposals.read(record.image_id).image_digest == image_digest(edited.path)

    time.sleep(0.05)
    cv2.imwrite(str(record.path), cv2.resize(pixels[..., ::-1], (record.width // 2, record.height // 2)))
    resized = load_voc(root, "train").records[0]
    third = provider.get(resized, 224, False)
    assert third.image_size == (record.width // 2, record.height // 2)
    assert third.factor == pytest.approx(2 * first.factor, rel=0.05)


def test_an_image_the_trunk_fails_on_is_named_and_left_out(tiny_demo, tmp_path, monkeypatch, caplog):
    config = make_config("cpu", TINY)
    records = load_voc(tiny_demo, "train").records[:3]
    backbone = build_backbone(config.backbone)
    real = convmaps.compute_conv_map

    def failing(backbone, image, scale, flip, max_side, device="cpu", digest=""):
        if image.shape[:2] == (records[1].height, records[1].width) and digest == image_digest(records[1].path):
            raise RuntimeError("Calculated padded input size per channel: (2 x 251)")
        return real(backbone, image, scale, flip, max_side, device, digest)

    monkeypatch.setattr(convmaps, "compute_conv_map", failing)
    provider = ConvMapProvider(backbone, ConvMapCache(tmp_path / "maps"), config.max_side)
    stats = provider.precompute(records, (224,), (False,), progress=False)
    assert stats["failed_ids"] == [records[1].image_id] and stats["computed"] == 2
    assert str(records[1].path) in caplog.text and "padded input size" in caplog.text


def test_no_fine_tuning_on_a_random_head_is_warned(tiny_demo, tmp_path, caplog):
    train_detector(load_voc(tiny_demo, "train"), make_config("cpu", {**TINY, "finetune.iterations": 0,
                                                                      "finetune.lr_steps": ()}),
                   tmp_path / "run", progress=False)
    assert "finetune.iterations=0: the fc layers keep their random initialisation" in caplog.text
