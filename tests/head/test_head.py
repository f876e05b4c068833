import numpy as np
import pytest
import torch

from detector.head.fc import SPPHead


def test_normalisation_from_a_float16_sample_matches_float64_statistics():
    rng = np.random.default_rng(0)
    sample = torch.from_numpy((rng.gamma(0.5, 3.0, size=(2500, 37)) + 100.0).astype(np.float16))
    head = SPPHead(37, 8, 3)
    head.set_normalisation(sample, chunk_rows=300)  # chunks that do not divide the rows
    reference = sample.numpy().astype(np.float64)
    np.testing.assert_allclose(head.feature_mean.numpy(), reference.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(head.feature_std.numpy(), reference.std(axis=0, ddof=1), rtol=1e-5)


def test_normalisation_floors_the_std_and_refuses_a_one_row_sample():
    head = SPPHead(4, 8, 3)
    head.set_normalisation(torch.ones(10, 4, dtype=torch.float16))
    assert torch.equal(head.feature_std, torch.full((4,), 1e-3))
    with pytest.raises(ValueError, match="N >= 2"):
        head.set_normalisation(torch.ones(1, 4))
