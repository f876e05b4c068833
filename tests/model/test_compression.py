"""Truncated-SVD fc6: factors against a float64 numpy SVD, the compressed head against a float64
reference, the model file round trip, the tools (compress_net.py, test_det.py --images) and the
refusals."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.analysis.modes import fresh_model
from detector.config import make_config
from detector.data.demo import make_demo_dataset
from detector.data.voc import load_voc
from detector.engine.train import train_detector
from detector.head.fc import SPPHead
from detector.model.compression import compress_fc6, truncated_svd
from detector.model.detector import load_model, save_model

ROOT = Path(__file__).resolve().parents[2]


def test_truncated_svd_matches_numpy_eckart_young():
    weight = torch.randn(24, 90, generator=torch.Generator().manual_seed(0))
    rank = 7
    factors = truncated_svd(weight, rank)
    assert factors.first.shape == (rank, 90) and factors.second.shape == (24, rank)
    reference = weight.double().numpy()
    u, s, vh = np.linalg.svd(reference, full_matrices=False)
    best = (u[:, :rank] * s[:rank]) @ vh[:rank]
    approx = (factors.second.double() @ factors.first.double()).numpy()
    np.testing.assert_allclose(approx, best, atol=1e-5)
    discarded = np.sqrt((s[rank:] ** 2).sum() / (s ** 2).sum())
    assert factors.relative_error == pytest.approx(discarded, rel=1e-9)
    assert factors.kept_energy == pytest.approx((s[:rank] ** 2).sum() / (s ** 2).sum(), rel=1e-9)
    assert np.linalg.norm(reference - approx) / np.linalg.norm(reference) == pytest.approx(discarded, rel=1e-5)


def test_truncated_svd_reproduces_a_weight_of_that_rank():
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(16, 5, generator=generator) @ torch.randn(5, 40, generator=generator)
    factors = truncated_svd(weight, 5)
    torch.testing.assert_close(factors.second @ factors.first, weight, atol=1e-4, rtol=1e-5)
    assert factors.kept_energy == pytest.approx(1.0) and factors.relative_error < 1e-6


@pytest.mark.parametrize("rank", [0, 16, 17])
def test_truncated_svd_refuses_ranks_that_save_nothing(rank):
    with pytest.raises(ValueError, match="rank must be in"):
        truncated_svd(torch.randn(16, 40), rank)
    with pytest.raises(ValueError, match="2-D"):
        truncated_svd(torch.randn(16), 1)


def test_compressed_head_matches_a_float64_reference_with_the_truncated_weight():
    torch.manual_seed(2)
    head = SPPHead(60, 20, 4, seed=3).eval()
    with torch.no_grad():
        head.fc6.weight.normal_()
        head.fc6.bias.normal_()
    head.set_normalisation(torch.rand(50, 60) * 3 + 1)
    compressed, factors = compress_fc6(head, 6)
    assert compressed.fc6_rank == 6 and head.fc6_rank is None  # the original is untouched
    pooled = torch.rand(33, 60) * 3 + 1
    x = ((pooled.double() - head.feature_mean.double()) / head.feature_std.double()).numpy()
    u, s, vh = np.linalg.svd(head.fc6.weight.detach().double().numpy(), full_matrices=False)
    weight6 = (u[:, :6] * s[:6]) @ vh[:6]
    fc6 = np.maximum(x @ weight6.T + head.fc6.bias.detach().double().numpy(), 0)
    fc7 = np.maximum(fc6 @ head.fc7.weight.detach().double().numpy().T + head.fc7.bias.detach().double().numpy(), 0)
    with torch.inference_mode():
        np.testing.assert_allclose(compressed.features(pooled).numpy(), fc7, rtol=1e-4, atol=1e-5)
        assert compressed(pooled).shape == (33, 5)
    full = sum(p.numel() for p in head.fc6.parameters())
    assert sum(p.numel() for p in compressed.fc6.parameters()) == 6 * (60 + 20) + 20 < full
    with pytest.raises(ValueError, match="already compressed"):
        compress_fc6(compressed, 3)
    with pytest.raises(ValueError, match="full fc6"):
        compressed.load_pretrained_fc({})


def test_training_refuses_a_compressed_fc6(tmp_path):
    config = make_config("cpu", {"fc6_rank": 8})
    with pytest.raises(ValueError, match="compress_net.py"):
        train_detector(None, config, tmp_path)
    with pytest.raises(ValueError, match="fc6_rank"):
        make_config("cpu", {"fc6_rank": 0})


def test_compress_tool_writes_a_model_that_tests_like_any_other(tmp_path, monkeypatch):
    monkeypatch.setenv("SPPNET_CACHE", str(tmp_path / "cache"))
    root = make_demo_dataset(tmp_path / "demo", n_train=1, n_test=3, seed=4)
    dataset = load_voc(root, "test")
    config = make_config("cpu", {"fc_width": 32, "proposals.max_side": 40, "proposals.workers": 1, "scales": (224,)})
    model = fresh_model(dataset.classes, config)
    save_model(tmp_path / "model.pt", model)
    env = {**os.environ, "SPPNET_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "compress_net.py"), "--model",
                             str(tmp_path / "model.pt"), "--rank", "8", "--out", str(tmp_path / "svd8.pt")],
                            check=True, capture_output=True, text=True, env=env)
    assert "rank 8" in result.stdout and "fewer multiply-adds" in result.stdout
    loaded = load_model(tmp_path / "svd8.pt")
    assert loaded.config.fc6_rank == 8 and loaded.head.fc6_rank == 8
    expected, _ = compress_fc6(model.head, 8)
    pooled = torch.rand(5, model.head.fc6.in_features)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.head.features(pooled), expected.features(pooled))
    refused = subprocess.run([sys.executable, str(ROOT / "tools" / "compress_net.py"), "--model",
                              str(tmp_path / "svd8.pt"), "--rank", "4", "--out", str(tmp_path / "x.pt")],
                             capture_output=True, text=True, env=env)
    assert refused.returncode != 0 and "already compressed" in refused.stderr
    subprocess.run([sys.executable, str(ROOT / "tools" / "test_det.py"), "--voc-root", str(root),
                    "--split", "test", "--model", str(tmp_path / "svd8.pt"), "--out", str(tmp_path / "test"),
                    "--images", "2", "--quiet"], check=True, capture_output=True, env=env)
    metrics = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert metrics["num_images"] == 2 and len(dataset.records) == 3


def test_first_images_of_a_split(tmp_path):
    root = make_demo_dataset(tmp_path / "demo", n_train=1, n_test=3, seed=4)
    dataset = load_voc(root, "test")
    first = dataset.first(2)
    assert [r.image_id for r in first.records] == [r.image_id for r in dataset.records[:2]]
    assert first.split == dataset.split and len(dataset.records) == 3
    with pytest.raises(ValueError, match="at least 1"):
        dataset.first(0)
