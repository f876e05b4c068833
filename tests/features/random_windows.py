"""Random test windows shared by the pooling and R-CNN tests."""
import numpy as np


def random_boxes(rng: np.random.Generator, count: int, width: float, height: float) -> np.ndarray:
    """Windows inside the image: tiny to whole-image, many touching a border."""
    x1 = rng.uniform(0, width - 2, count)
    y1 = rng.uniform(0, height - 2, count)
    x2 = np.minimum(x1 + rng.uniform(1, width, count), width)
    y2 = np.minimum(y1 + rng.uniform(1, height, count), height)
    return np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)
