"""One lock per cache item: a second user waits, then finds the item made instead of making it again."""
import threading
import time

import cv2
import numpy as np

from detector.core.locks import item_lock
from detector.features import convmaps
from detector.features.convmaps import ConvMap, ConvMapCache, ConvMapProvider


def test_a_second_holder_waits_for_the_first(tmp_path):
    order = []
    inside = threading.Event()

    def first():
        with item_lock(tmp_path / "item"):
            inside.set()
            time.sleep(0.3)
            order.append("first done")

    thread = threading.Thread(target=first)
    thread.start()
    inside.wait()
    with item_lock(tmp_path / "item"):
        order.append("second in")
    thread.join()
    assert order == ["first done", "second in"]


def test_two_users_of_one_cache_compute_a_map_once(tmp_path, monkeypatch):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((40, 50, 3), np.uint8))
    calls = []

    def slow_compute(backbone, pixels, scale, flip, max_side, device="cpu", digest=""):
        calls.append(scale)
        time.sleep(0.3)
        return ConvMap(np.ones((2, 3, 4), np.float16), 1.0, (50, 40), digest)

    monkeypatch.setattr(convmaps, "compute_conv_map", slow_compute)
    record = type("Record", (), {"image_id": "a", "path": image})()
    providers = [ConvMapProvider(None, ConvMapCache(tmp_path / "maps"), 2000) for _ in range(2)]
    results = [None, None]

    def get(k):
        results[k] = providers[k].get(record, 224, False)

    threads = [threading.Thread(target=get, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == [224] and all(r is not None and r.image_size == (50, 40) for r in results)
