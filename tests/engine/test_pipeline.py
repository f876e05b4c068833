"""End-to-end checks of the training and test pipeline on a tiny demo dataset."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY as BASE_TINY

import detector.head.finetune as finetune_module
from detector.config import LEGACY_KEYS, SamplingConfig, make_config
from detector.core.paths import cache_root
from detector.data.voc import load_voc
from detector.engine.test import test_detector
from detector.engine.train import train_detector, training_windows
from detector.features.backbones import build_backbone
from detector.features.convmaps import ConvMap, ConvMapCache, ConvMapProvider
from detector.features.spp import SpatialPyramidPooling
from detector.head.fc import SPPHead
from detector.head.finetune import finetune
from detector.head.sampling import sample_windows
from detector.head.window_bank import PoolingContext, build_window_bank, pool_training_windows
from detector.model.detector import conv_map_folder, load_model

ROOT = Path(__file__).resolve().parents[2]
TINY = {**BASE_TINY, "finetune.iterations": 30, "finetune.lr_steps": (20,)}


def conv_map_provider(backbone, config, root):
    """The conv-map provider a detector built for the dataset at ``root`` uses."""
    return ConvMapProvider(backbone, ConvMapCache(conv_map_folder(cache_root(root), backbone, config)),
                           config.max_side)


def test_conv_map_cache_round_trip_and_broken_files(tmp_path):
    cache = ConvMapCache(tmp_path)
    features = np.random.default_rng(0).normal(size=(8, 5, 7)).astype(np.float16)
    size = cache.save("a/b c", 688, True, ConvMap(features, 1.5))
    loaded = cache.load("a/b c", 688, True)
    assert size > features.nbytes and np.array_equal(loaded.features, features) and loaded.factor == 1.5
    assert cache.load("a/b c", 688, False) is None  # the unflipped map is another file
    path = cache.path("a/b c", 688, True)
    data = bytearray(path.read_bytes())
    data[-200] ^= 0xFF  # flip bits inside the stored features
    path.write_bytes(bytes(data))
    assert cache.load("a/b c", 688, True) is None
    path.write_bytes(b"not an npz")
    assert cache.load("a/b c", 688, True) is None


def test_provider_recomputes_a_broken_map(tiny_demo):
    dataset = load_voc(tiny_demo, "train")
    config = make_config("cpu", TINY)
    backbone = build_backbone(config.backbone)
    provider = conv_map_provider(backbone, config, tiny_demo)
    record = dataset.records[0]
    first = provider.get(record, 224, False)
    path = provider.cache.path(record.image_id, 224, False)
    path.write_bytes(b"broken")
    again = provider.get(record, 224, False)
    assert np.array_equal(first.features, again.features)
    assert provider.cache.load(record.image_id, 224, False) is not None


def _finetune(dataset, config, checkpoint, policy="auto"):
    backbone = build_backbone(config.backbone)
    spp = SpatialPyramidPooling(backbone.levels)
    provider = conv_map_provider(backbone, config, dataset.root)
    head = SPPHead(spp.output_size(backbone.channels), config.fc_width, len(dataset.classes))
    context = PoolingContext(provider, spp, backbone.geometry, config.scales)
    stats = finetune(head, context, training_windows(dataset, config, False), dataset.classes,
                     config, checkpoint, progress=False, policy=policy)
    return head, stats


class Killed(Exception):
    """Stands for a kill right after the first checkpoint was written."""


def test_finetuning_resumes_exactly_and_restarts_for_other_settings(tiny_demo, tmp_path, monkeypatch, caplog):
    dataset = load_voc(tiny_demo, "train")
    straight, _ = _finetune(dataset, make_config("cpu", TINY), tmp_path / "a.pt")
    _check_killed_run_resumes(dataset, make_config("cpu", TINY), straight, tmp_path, monkeypatch)
    # a complete checkpoint made for other classes or settings is never reused
    other = load_voc(tiny_demo, "train", classes=list(reversed(dataset.classes)))
    with pytest.raises(ValueError, match="b.pt was made with other settings.*classes"):
        _finetune(other, make_config("cpu", TINY), tmp_path / "b.pt", policy="resume")
    _, stats = _finetune(dataset, make_config("cpu", {**TINY, "finetune.lr": 0.02}), tmp_path / "b.pt")
    assert stats["iterations"] == 30 and "finetune.lr: 0.01 -> 0.02" in caplog.text


def test_resampled_banks_are_drawn_afresh_and_resume_exactly(tiny_demo, tmp_path, monkeypatch):
    """finetune.resample_every = 7 over 30 iterations: banks at 0, 7, 14, 21 and 28, each its own
    sample; a run killed at the checkpoint of iteration 10 (inside the second bank) resumes to the
    uninterrupted run's weights."""
    dataset = load_voc(tiny_demo, "train")
    config = make_config("cpu", {**TINY, "finetune.resample_every": 7})
    banks = []
    real_build = finetune_module.build_window_bank

    def build_and_keep(*args, **kwargs):
        banks.append(real_build(*args, **kwargs))
        return banks[-1]

    monkeypatch.setattr(finetune_module, "build_window_bank", build_and_keep)
    straight, stats = _finetune(dataset, config, tmp_path / "a.pt")
    assert len(banks) == 5 and stats["iterations"] == 30
    assert not torch.equal(banks[0].features, banks[1].features)  # another sample of windows
    once, _ = _finetune(dataset, make_config("cpu", TINY), tmp_path / "once.pt")
    assert torch.equal(banks[0].features, real_build(  # the first bank is the one-sample run's
        *_bank_inputs(dataset, config), finetune_module.bank_generator(config.seed, 0), progress=False).features)
    assert not torch.allclose(once.fc8.weight, straight.fc8.weight)
    monkeypatch.setattr(finetune_module, "build_window_bank", real_build)
    _check_killed_run_resumes(dataset, config, straight, tmp_path, monkeypatch)
    with pytest.raises(ValueError, match=r"finetune\.resample_every must be >= 0, got -1"):
        make_config("cpu", {**TINY, "finetune.resample_every": -1})


def _bank_inputs(dataset, config):
    """``build_window_bank``'s first four arguments for fine-tuning ``dataset`` under ``config``."""
    backbone = build_backbone(config.backbone)
    spp = SpatialPyramidPooling(backbone.levels)
    context = PoolingContext(conv_map_provider(backbone, config, dataset.root), spp, backbone.geometry,
                             config.scales)
    return context, training_windows(dataset, config, False), config.sampling, (False, True)


def _check_killed_run_resumes(dataset, config, straight, tmp_path, monkeypatch):
    """Fine-tuning killed right after its first checkpoint (iteration 10) resumes to ``straight``."""
    real_save = finetune_module.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        raise Killed

    monkeypatch.setattr(finetune_module, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        _finetune(dataset, config, tmp_path / "b.pt")  # killed after iteration 10
    monkeypatch.setattr(finetune_module, "save_checkpoint", real_save)
    resumed, stats = _finetune(dataset, config, tmp_path / "b.pt")
    assert stats["iterations"] == 20
    for name, tensor in straight.state_dict().items():
        assert torch.allclose(tensor, resumed.state_dict()[name], atol=1e-6), name


def test_window_bank_holds_each_images_sampled_windows_in_order(tiny_demo):
    """The bank is filled in place; it must equal pooling image by image and concatenating."""
    config = make_config("cpu", {**TINY, "scales": (160, 224)})
    dataset = load_voc(tiny_demo, "train")
    backbone = build_backbone(config.backbone)
    spp = SpatialPyramidPooling(backbone.levels)
    context = PoolingContext(conv_map_provider(backbone, config, dataset.root), spp, backbone.geometry,
                             config.scales)
    train = training_windows(dataset, config, False)
    sampling = SamplingConfig(windows_per_image=8)
    bank = build_window_bank(context, train, sampling, (False, True), np.random.default_rng(5), progress=False)
    rng = np.random.default_rng(5)
    features, labels = [], []
    for windows in train:
        for flip in (False, True):
            indices, window_labels = sample_windows(windows, sampling, rng)
            features.append(pool_training_windows(context, windows, indices, flip, rng).half())
            labels.append(torch.from_numpy(window_labels))
    assert torch.equal(bank.features, torch.cat(features)) and torch.equal(bank.labels, torch.cat(labels))
    assert len(bank.labels) == len(train) * 2 * 8 and (bank.labels > 0).any()


def test_train_then_test_writes_devkit_files_and_metrics(tiny_demo, tmp_path):
    train = load_voc(tiny_demo, "train")
    model_path = train_detector(train, make_config("cpu", TINY), tmp_path / "run", progress=False)
    model = load_model(model_path, cache_dir=cache_root(tiny_demo))
    assert model.classes == train.classes and model.svm is not None and model.regressor is not None
    test = load_voc(tiny_demo, "test", classes=model.classes)
    metrics = test_detector(model, test, tmp_path / "out", progress=False)
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(written["ap"]) == set(model.classes)
    assert 0.0 <= written["mAP"] <= 1.0 and written["mAP"] == pytest.approx(metrics["mAP"])
    assert {"AP", "AP50", "AP75"} <= set(written["coco"])
    for name in model.classes:
        assert (tmp_path / "out" / f"comp4_det_test_{name}.txt").exists()
    detections = json.loads((tmp_path / "out" / "detections_coco.json").read_text())
    assert all({"image_id", "category_id", "bbox", "score"} <= set(d) for d in detections)
    # the devkit files evaluated alone give the same mAP, and draw the same curves again
    for name in ("pr_curves.json", "pr_curves.png"):
        (tmp_path / "out" / name).unlink()
    subprocess.run([sys.executable, str(ROOT / "tools" / "test_det.py"), "--voc-root", str(tiny_demo),
                    "--split", "test", "--eval-only", str(tmp_path / "out")], check=True,
                   capture_output=True)
    again = json.loads((tmp_path / "out" / "metrics_eval.json").read_text())
    assert again["mAP"] == pytest.approx(written["mAP"], abs=1e-6)
    assert (tmp_path / "out" / "pr_curves.png").stat().st_size > 10_000  # --eval-only draws its curves
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == written  # the test run's, kept
    # --eval-only takes the model's class list from classes.json, not a class the annotations add
    classes_file = tmp_path / "out" / "classes.json"
    assert json.loads(classes_file.read_text())["classes"] == model.classes
    classes_file.write_text(json.dumps({**json.loads(classes_file.read_text()), "classes": model.classes[:1]}))
    subprocess.run([sys.executable, str(ROOT / "tools" / "test_det.py"), "--voc-root", str(tiny_demo),
                    "--split", "test", "--eval-only", str(tmp_path / "out")], check=True,
                   capture_output=True)
    assert list(json.loads((tmp_path / "out" / "metrics_eval.json").read_text())["ap"]) == model.classes[:1]
    # a model file of the previous format (flat config, "sppnet-detector-v1") still loads, equal
    state = torch.load(model_path, weights_only=True)
    new_names = {new: old for old, new in LEGACY_KEYS.items()}
    flat = {new_names.get(key, key): value for key, value in model.config.flat().items()
            if key in new_names or "." not in key}
    old_state = {k: v for k, v in state.items() if k not in ("checksum", "stages")}  # v1 had neither
    torch.save({**old_state, "format": "sppnet-detector-v1", "config": flat}, tmp_path / "old.pt")
    old = load_model(tmp_path / "old.pt")
    assert old.config == model.config and old.classes == model.classes
    assert all(torch.equal(v, old.head.state_dict()[k]) for k, v in model.head.state_dict().items())


def test_stop_after_finetune_gives_a_softmax_model_without_classifiers(tiny_demo, tmp_path):
    train = load_voc(tiny_demo, "train")
    model_path = train_detector(train, make_config("cpu", TINY), tmp_path / "run", progress=False,
                                stop_after="finetune")
    assert not (tmp_path / "run" / "classifiers.pt").exists()
    model = load_model(model_path, cache_dir=cache_root(tiny_demo))
    assert model.svm is None and model.regressor is None and model.config.test.scorer == "softmax"
    test = load_voc(tiny_demo, "test", classes=model.classes)
    metrics = test_detector(model, test, tmp_path / "out", progress=False)
    assert 0.0 <= metrics["mAP"] <= 1.0 and set(metrics["ap"]) == set(model.classes)
    with pytest.raises(ValueError, match="model.pt has no SVMs.*--scorer softmax"):
        load_model(model_path, cache_dir=cache_root(tiny_demo), overrides={"test.scorer": "svm"})
    with pytest.raises(ValueError, match="stop_after must be one of"):
        train_detector(train, make_config("cpu", TINY), tmp_path / "run", progress=False, stop_after="svm")
