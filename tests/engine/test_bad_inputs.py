"""A dataset with every kind of bad or odd input: each is named, and skipped or used, and training
and testing go on with the rest."""
import json
import logging
import shutil

import cv2
import numpy as np
import pytest
from conftest import TINY
from PIL import Image

from detector.config import make_config
from detector.data.voc import load_voc, read_split_ids
from detector.engine.test import test_detector
from detector.engine.train import train_detector
from detector.model.detector import load_model


def pattern(height, width):
    """A smooth colour image, so selective search finds regions."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x * 255 // max(width, 1)), (y * 255 // max(height, 1)), ((x + y) % 256)], -1).astype(np.uint8)


def xml(image_id, width, height, objects):
    """VOC XML text; objects are (name, xmin, ymin, xmax, ymax)."""
    parts = [f"<annotation><filename>{image_id}.jpg</filename><size><width>{width}</width>"
             f"<height>{height}</height><depth>3</depth></size>"]
    for name, *box in objects:
        coords = "".join(f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
        parts.append(f"<object><name>{name}</name><difficult>0</difficult><bndbox>{coords}</bndbox></object>")
    return "".join(parts) + "</annotation>"


@pytest.fixture(scope="module")
def bad_dataset(tiny_demo, tmp_path_factory):
    """The tiny demo's training images plus one of each bad or odd case; returns (root, classes)."""
    demo = tiny_demo
    root = tmp_path_factory.mktemp("bad") / "bad"
    shutil.copytree(demo, root)
    classes = load_voc(demo, "train").classes
    name = classes[0]
    images, notes = root / "JPEGImages", root / "Annotations"
    ok = [(name, 2, 2, 6, 6)]

    def add(image_id, width, height, objects=ok, write=None):
        if write is not None:
            write(images)
        (notes / f"{image_id}.xml").write_text(xml(image_id, width, height, objects))

    cv2.imwrite(str(images / "full.jpg"), pattern(120, 160))
    data = (images / "full.jpg").read_bytes()
    (images / "full.jpg").unlink()
    add("truncated", 160, 120, write=lambda d: (d / "truncated.jpg").write_bytes(data[:len(data) // 2]))
    add("zero_byte", 160, 120, write=lambda d: (d / "zero_byte.jpg").write_bytes(b""))
    add("png_as_jpg", 160, 120, [(name, 20, 20, 100, 90)],
        write=lambda d: Image.fromarray(pattern(120, 160)).save(d / "png_as_jpg.jpg", format="PNG"))
    add("grey", 160, 120, [(name, 20, 20, 100, 90)],
        write=lambda d: cv2.imwrite(str(d / "grey.jpg"), pattern(120, 160)[..., 0]))
    add("rgba", 160, 120, [(name, 20, 20, 100, 90)],
        write=lambda d: Image.fromarray(np.dstack([pattern(120, 160), np.full((120, 160), 200, np.uint8)]),
                                        "RGBA").save(d / "rgba.png"))
    add("sixteen", 160, 120, [(name, 20, 20, 100, 90)],
        write=lambda d: cv2.imwrite(str(d / "sixteen.png"), pattern(120, 160).astype(np.uint16) * 257))
    add("tiny", 8, 8, write=lambda d: cv2.imwrite(str(d / "tiny.jpg"), pattern(8, 8)))
    add("wide", 2000, 100, [(name, 100, 10, 300, 90)], write=lambda d: cv2.imwrite(str(d / "wide.jpg"), pattern(100, 2000)))
    add("sliver", 2000, 8, write=lambda d: cv2.imwrite(str(d / "sliver.jpg"), pattern(8, 2000)))
    cv2.imwrite(str(images / "malformed.jpg"), pattern(60, 80))
    (notes / "malformed.xml").write_text("<annotation><object><name>")
    cv2.imwrite(str(images / "no_xml.jpg"), pattern(60, 80))
    add("boxes", 160, 120, [("zebra", 10, 10, 50, 50), (name, 500, 500, 600, 600), (name, 40, 40, 30, 60),
                            (name, 100, 60, 400, 300)],
        write=lambda d: cv2.imwrite(str(d / "boxes.jpg"), pattern(120, 160)))
    ids = read_split_ids(demo, "train") + ["truncated", "zero_byte", "png_as_jpg", "grey", "rgba", "sixteen",
                                           "tiny", "wide", "sliver", "malformed", "no_xml", "boxes", "grey"]
    (root / "ImageSets" / "Main" / "bad.txt").write_text("".join(f"{i}\n" for i in ids))
    return root, classes


def test_the_loader_names_each_problem_and_keeps_what_a_trunk_can_take(bad_dataset, caplog):
    root, classes = bad_dataset
    caplog.set_level(logging.WARNING)
    dataset = load_voc(root, "bad", classes)
    kept = {r.image_id: r for r in dataset.records}
    problems = "\n".join(dataset.problems)
    # skipped, each with a line naming its file
    assert "zero_byte.jpg" in problems and "file is empty" in problems
    assert "sliver.jpg: 2000x8 is too elongated" in problems
    assert "malformed.xml" in problems and "no_xml.xml" in problems
    assert not {"zero_byte", "sliver", "malformed", "no_xml"} & set(kept)
    # kept and usable: odd encodings and sizes
    for image_id, size in {"png_as_jpg": (160, 120), "grey": (160, 120), "rgba": (160, 120),
                           "sixteen": (160, 120), "tiny": (8, 8), "wide": (2000, 100)}.items():
        assert (kept[image_id].width, kept[image_id].height) == size, image_id
    # object problems: only that object dropped or clipped
    assert "unknown class 'zebra'" in problems
    assert len(kept["boxes"].boxes) == 1 and kept["boxes"].boxes[0].tolist() == [99.0, 59.0, 160.0, 120.0]
    # the duplicate id is read once, with a warning
    assert [r.image_id for r in dataset.records].count("grey") == 1 and "grey" in caplog.text
    # a truncated JPEG has a readable header: the loader keeps it, the stages skip it (below)
    assert "truncated" in kept


def test_training_and_testing_skip_the_images_that_fail_and_count_them(bad_dataset, tmp_path, caplog):
    root, classes = bad_dataset
    dataset = load_voc(root, "bad", classes)
    model_path = train_detector(dataset, make_config("cpu", TINY), tmp_path / "run", progress=False)
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert dataset.skipped == 4  # zero_byte, sliver, malformed, no_xml
    assert summary["skipped_images"] == {"loader": 4, "proposals": 1, "conv_maps": 0}
    assert summary["images"] == len(dataset.records) - 1
    assert str(root / "JPEGImages" / "truncated.jpg") in caplog.text
    model = load_model(model_path)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(OSError, match=f"cannot write in {tmp_path / 'a_file' / 'out'}"):
        test_detector(model, dataset, tmp_path / "a_file" / "out", progress=False)  # before any detection
    metrics = test_detector(model, dataset, tmp_path / "out", progress=False)
    assert metrics["skipped_images"] == 1 + 4 and set(metrics["ap"]) == set(classes)
    written = json.loads((tmp_path / "out" / "classes.json").read_text())
    assert written["classes"] == classes and written["split"] == "bad"
