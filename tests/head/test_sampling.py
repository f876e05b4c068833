import numpy as np

from detector.core.records import ImageRecord
from detector.core.windows import build_windows
from detector.head.sampling import SamplingConfig, sample_windows


def make_record():
    gt = np.array([[10, 10, 60, 60], [100, 100, 180, 150]], np.float32)
    return ImageRecord("a", None, 200, 200, gt, np.array([2, 0]), np.zeros(2, bool))


def test_windows_put_gt_first_and_measure_overlap():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 150, (300, 2))
    proposals = np.concatenate([xy, xy + rng.uniform(5, 60, (300, 2))], 1).astype(np.float32)
    windows = build_windows(make_record(), proposals)
    assert windows.num_gt == 2 and np.allclose(windows.boxes[:2], make_record().boxes)
    assert np.allclose(windows.max_iou[:2], 1.0)
    assert windows.gt_labels[0] == 2 and windows.gt_labels[1] == 0


def test_sample_has_the_foreground_fraction_and_right_labels():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 150, (2000, 2))
    proposals = np.concatenate([xy, xy + rng.uniform(5, 80, (2000, 2))], 1).astype(np.float32)
    windows = build_windows(make_record(), proposals)
    config = SamplingConfig(windows_per_image=64)
    indices, labels = sample_windows(windows, config, rng)
    assert len(indices) == 64 and len(set(indices.tolist())) == 64
    fg = labels > 0
    assert fg.sum() == 16  # 25% of 64 when enough foreground exists
    assert np.all(windows.max_iou[indices[fg]] >= 0.5)
    assert np.all(labels[fg] == windows.gt_labels[indices[fg]] + 1)
    bg_iou = windows.max_iou[indices[~fg]]
    assert np.all((bg_iou >= 0.1) & (bg_iou < 0.5))


def test_image_without_band_background_still_gives_negatives():
    record = ImageRecord("b", None, 100, 100)  # no GT at all
    windows = build_windows(record, np.array([[0, 0, 10, 10], [50, 50, 90, 90]], np.float32))
    indices, labels = sample_windows(windows, SamplingConfig(), np.random.default_rng(0))
    assert len(indices) == 2 and np.all(labels == 0)
