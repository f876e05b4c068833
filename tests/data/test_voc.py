"""Image loading and the VOC reader: every kind of bad input, odd images, and the real data."""
from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from detector.core.images import ImageReadError, image_size, load_image
from detector.data.voc import (
    discover_classes,
    in_holdout,
    load_voc,
    parse_annotation,
    read_split_ids,
    write_voc_annotation,
)

REAL_VOC = Path(__file__).resolve().parents[3] / "shared" / "data" / "VOC2007"


def _pattern(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A random RGB uint8 image."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


# ---------------------------------------------------------------- images


@pytest.fixture()
def odd_images(tmp_path: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """Images in many encodings, each with the RGB array it must decode to (lossless ones)."""
    rgb = _pattern(20, 30)
    grey = rgb[..., 0]
    files: dict[str, tuple[Path, np.ndarray]] = {}

    def add(name: str, expected: np.ndarray, write) -> None:
        path = tmp_path / name
        write(path)
        files[name] = (path, expected)

    add("rgb.png", rgb, lambda p: _write_rgb(p, rgb))
    grey_rgb = np.repeat(grey[..., None], 3, axis=2)
    bgr16 = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257
    add("grey.png", grey_rgb, lambda p: cv2.imwrite(str(p), grey))
    add("rgba.png", rgb, lambda p: Image.fromarray(np.dstack([rgb, grey]), "RGBA").save(p))
    add("la.png", grey_rgb, lambda p: Image.fromarray(np.dstack([grey, grey]), "LA").save(p))
    add("deep16.png", rgb, lambda p: cv2.imwrite(str(p), bgr16))
    add("grey16.png", grey_rgb, lambda p: cv2.imwrite(str(p), grey.astype(np.uint16) * 257))
    palette = Image.fromarray(rgb).quantize(colors=16)
    add("palette.png", np.asarray(palette.convert("RGB")), lambda p: palette.save(p))
    add("tiny.bmp", rgb[:8, :8], lambda p: _write_rgb(p, rgb[:8, :8]))
    wide = _pattern(100, 2000, seed=1)
    add("wide.png", wide, lambda p: _write_rgb(p, wide))
    return files


def test_load_image_decodes_every_encoding_to_rgb_uint8(odd_images) -> None:
    for name, (path, expected) in odd_images.items():
        image = load_image(path)
        assert image.dtype == np.uint8 and image.shape == expected.shape, name
        assert np.array_equal(image, expected), name


def test_load_image_lossy_jpeg_grey_and_colour(tmp_path: Path) -> None:
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:, :30] = (220, 30, 40)  # red left half: checks RGB, not BGR, order
    _write_rgb(tmp_path / "colour.jpg", rgb)
    cv2.imwrite(str(tmp_path / "grey.jpg"), np.full((40, 60), 128, np.uint8))
    colour = load_image(tmp_path / "colour.jpg")
    assert colour.shape == (40, 60, 3)
    assert np.abs(colour[:, :25].astype(int) - (220, 30, 40)).max() < 12
    grey = load_image(tmp_path / "grey.jpg")
    assert grey.shape == (40, 60, 3) and np.abs(grey.astype(int) - 128).max() <= 2


def test_image_size_header_read_matches_full_decode(odd_images) -> None:
    for name, (path, _) in odd_images.items():
        height, width = load_image(path).shape[:2]
        assert image_size(path) == (width, height), name


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("missing.jpg", None, "no such file"),
        ("empty.jpg", b"", "empty"),
        ("garbage.jpg", b"this is not an image at all", "not a decodable image"),
    ],
)
def test_unreadable_images_raise_naming_the_file(tmp_path: Path, name: str, content, reason: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    for read in (load_image, image_size):
        with pytest.raises(ImageReadError, match=reason) as caught:
            read(path)
        assert str(path) in str(caught.value) and caught.value.path == path


def test_truncated_jpeg_is_not_silently_decoded(tmp_path: Path) -> None:
    _write_rgb(tmp_path / "full.jpg", _pattern(64, 64))
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.jpg"):
        load_image(tmp_path / "cut.jpg")


# ---------------------------------------------------------------- VOC folders


def _xml(image_id: str, filename: str | None, size: tuple[str, str] | None, objects: list[tuple]) -> str:
    """VOC XML text; objects are (name, (xmin, ymin, xmax, ymax) as text, difficult text or None)."""
    parts = ["<annotation>", "<folder>JPEGImages</folder>"]
    if filename is not None:
        parts.append(f"<filename>{filename}</filename>")
    if size is not None:
        parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    for name, box, difficult in objects:
        parts.append("<object>")
        if name is not None:
            parts.append(f"<name>{name}</name>")
        if difficult is not None:
            parts.append(f"<difficult>{difficult}</difficult>")
        coords = "".join(f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
        parts.append(f"<bndbox>{coords}</bndbox></object>")
    parts.append("</annotation>")
    return "\n".join(parts)


class VOCFolder:
    """Builds a small VOC-layout dataset in a temporary folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    def image(self, name: str, height: int, width: int, mode: str = "rgb") -> Path:
        path = self.root / "JPEGImages" / name
        rgb = _pattern(height, width)
        if mode == "grey":
            cv2.imwrite(str(path), rgb[..., 0])
        elif mode == "rgba":
            Image.fromarray(np.dstack([rgb, rgb[..., 0]]), "RGBA").save(path, format="PNG")
        else:
            _write_rgb(path, rgb)
        return path

    def xml(self, image_id: str, text: str) -> Path:
        path = self.root / "Annotations" / f"{image_id}.xml"
        path.write_text(text, encoding="utf-8")
        return path

    def split(self, name: str, lines: list[str]) -> None:
        (self.root / "ImageSets" / "Main" / f"{name}.txt").write_text("".join(f"{l}\n" for l in lines))


@pytest.fixture()
def voc(tmp_path: Path) -> VOCFolder:
    return VOCFolder(tmp_path / "VOC")


def _by_id(dataset) -> dict:
    return {record.image_id: record for record in dataset.records}


def test_clean_dataset_with_custom_ids_and_classes(voc: VOCFolder) -> None:
    voc.image("img-a.jpg", 60, 80)
    voc.image("frame.001.png", 50, 40)
    voc.image("7.jpg", 30, 30)
    voc.xml("img-a", _xml("img-a", "img-a.jpg", ("80", "60"), [
        ("Red Car", ("1", "1", "10", "20"), "0"),
        ("tree", ("5.5", "6", "80", "60"), "1"),
    ]))
    voc.xml("frame.001", _xml("frame.001", "frame.001.png", ("40", "50"),
                              [("tree", ("2", "3", "4", "5"), None)]))
    voc.xml("7", _xml("7", "7.jpg", ("30", "30"), []))
    voc.split("mine", ["img-a", "frame.001", "7"])

    dataset = load_voc(voc.root, "mine")
    assert dataset.problems == []
    assert dataset.classes == ["Red Car", "tree"]
    records = _by_id(dataset)
    assert [r.image_id for r in dataset.records] == ["img-a", "frame.001", "7"]
    a = records["img-a"]
    assert (a.width, a.height) == (80, 60) and a.path == voc.root / "JPEGImages" / "img-a.jpg"
    assert a.boxes.dtype == np.float32 and a.labels.dtype == np.int64 and a.difficult.dtype == bool
    np.testing.assert_array_equal(a.boxes, [[0, 0, 10, 20], [4.5, 5, 80, 60]])
    np.testing.assert_array_equal(a.labels, [0, 1])
    np.testing.assert_array_equal(a.difficult, [False, True])
    f = records["frame.001"]
    np.testing.assert_array_equal(f.boxes, [[1, 2, 4, 5]])
    np.testing.assert_array_equal(f.difficult, [False])  # missing <difficult> reads as 0
    assert len(records["7"].boxes) == 0  # an image without objects is kept as background


def test_missing_unparseable_or_broken_files_skip_the_image(voc: VOCFolder, caplog) -> None:
    voc.image("good.jpg", 40, 40)
    voc.xml("good", _xml("good", "good.jpg", ("40", "40"), [("cat", ("1", "1", "20", "20"), "0")]))
    voc.xml("noimage", _xml("noimage", "noimage.jpg", ("40", "40"), [("cat", ("1", "1", "20", "20"), "0")]))
    voc.image("badxml.jpg", 40, 40)
    bad_xml = voc.xml("badxml", "<annotation><object><name>cat</name></annotation")
    voc.image("noxml.jpg", 40, 40)
    (voc.root / "JPEGImages" / "corrupt.jpg").write_bytes(b"not a jpeg")
    voc.xml("corrupt", _xml("corrupt", "corrupt.jpg", ("40", "40"), [("cat", ("1", "1", "20", "20"), "0")]))
    wrong_root = voc.xml("notvoc", "<html><body/></html>")
    voc.image("notvoc.jpg", 40, 40)
    voc.split("s", ["good", "noimage", "badxml", "noxml", "corrupt", "notvoc"])

    with caplog.at_level(logging.WARNING, logger="detector.data.voc"):
        dataset = load_voc(voc.root, "s")
    assert [r.image_id for r in dataset.records] == ["good"]
    assert len(dataset.problems) == 5
    joined = "\n".join(dataset.problems)
    assert f"{voc.root / 'JPEGImages' / 'noimage'}" in joined and "not found" in joined
    assert f"{bad_xml} cannot be parsed" in joined
    assert f"annotation {voc.root / 'Annotations' / 'noxml.xml'} not found" in joined
    assert f"cannot read image {voc.root / 'JPEGImages' / 'corrupt.jpg'}" in joined
    assert f"{wrong_root} has root <html>" in joined
    assert all(problem in caplog.text for problem in dataset.problems)


def test_object_level_problems_drop_or_clip_only_that_object(voc: VOCFolder) -> None:
    voc.image("x.jpg", 100, 200)  # width 200, height 100
    xml = voc.xml("x", _xml("x", "x.jpg", ("200", "100"), [
        ("cat", ("1", "1", "50", "50"), "0"),  # fine
        ("cat", ("-9", "11", "250", "120"), "0"),  # partly outside: clipped
        ("dog", ("300", "10", "350", "50"), "0"),  # fully outside: dropped
        ("dog", ("40", "10", "39", "50"), "0"),  # xmax = xmin - 1: zero width, dropped
        ("dog", ("60", "10", "20", "50"), "0"),  # negative width: dropped
        ("dog", ("1", "abc", "20", "50"), "0"),  # non-numeric: dropped
        ("dog", ("1", "nan", "20", "50"), "0"),  # non-finite: dropped
        (None, ("1", "1", "20", "20"), "0"),  # no name: dropped
        ("bird", ("10", "10", "10", "10"), "yes"),  # 1x1 box kept; bad <difficult> reads as 0
    ]))
    voc.split("s", ["x"])

    dataset = load_voc(voc.root, "s")
    record = _by_id(dataset)["x"]
    np.testing.assert_array_equal(record.boxes, [[0, 0, 50, 50], [0, 10, 200, 100], [9, 9, 10, 10]])
    assert [dataset.classes[i] for i in record.labels] == ["cat", "cat", "bird"]
    np.testing.assert_array_equal(record.difficult, [False, False, False])
    assert all(str(xml) in problem for problem in dataset.problems)
    outcomes = sorted(problem.split("; ")[-1] for problem in dataset.problems)
    assert outcomes == sorted([
        "clipped",
        "object dropped",  # fully outside
        "object dropped",  # zero width
        "object dropped",  # negative width
        "object dropped",  # non-numeric
        "object dropped",  # non-finite
        "object dropped",  # no name
        "read as 0",
    ])
    joined = "\n".join(dataset.problems)
    assert "extends outside the 200x100 image" in joined and "lies outside the 200x100 image" in joined
    assert joined.count("zero or negative area") == 2 and joined.count("non-numeric") == 2


def test_unknown_class_with_given_classes(voc: VOCFolder) -> None:
    voc.image("a.jpg", 50, 50)
    xml = voc.xml("a", _xml("a", "a.jpg", ("50", "50"), [
        ("dog", ("1", "1", "20", "20"), "0"),
        ("unicorn", ("5", "5", "30", "30"), "0"),
        ("cat", ("10", "10", "40", "40"), "0"),
    ]))
    voc.split("s", ["a"])
    dataset = load_voc(voc.root, "s", classes=["cat", "dog"])
    assert dataset.classes == ["cat", "dog"]
    record = dataset.records[0]
    np.testing.assert_array_equal(record.labels, [1, 0])
    np.testing.assert_array_equal(record.boxes, [[0, 0, 20, 20], [9, 9, 40, 40]])
    assert len(dataset.problems) == 1
    assert str(xml) in dataset.problems[0] and "unknown class 'unicorn'" in dataset.problems[0]


def test_odd_images_load_with_their_real_size(voc: VOCFolder) -> None:
    shapes = {"grey": (30, 40, "grey", "jpg"), "alpha": (25, 35, "rgba", "png"), "tiny": (8, 8, "rgb", "png"),
              "wide": (100, 2000, "rgb", "jpg")}
    for image_id, (height, width, mode, ext) in shapes.items():
        voc.image(f"{image_id}.{ext}", height, width, mode)
        voc.xml(image_id, _xml(image_id, f"{image_id}.{ext}", (str(width), str(height)),
                               [("thing", ("1", "1", str(width), str(height)), "0")]))
    voc.split("s", list(shapes))
    dataset = load_voc(voc.root, "s")
    assert dataset.problems == []
    for record in dataset.records:
        height, width = shapes[record.image_id][:2]
        assert (record.width, record.height) == (width, height)
        np.testing.assert_array_equal(record.boxes, [[0, 0, width, height]])
        assert load_image(record.path).shape == (height, width, 3)


def test_size_missing_zero_or_wrong_comes_from_the_image(voc: VOCFolder) -> None:
    sizes = (("nosize", None), ("zero", ("0", "0")), ("text", ("wide", "tall")), ("wrong", ("50", "70")))
    for image_id, size in sizes:
        voc.image(f"{image_id}.jpg", 70, 50 if image_id != "wrong" else 90)
        voc.xml(image_id, _xml(image_id, f"{image_id}.jpg", size, [("cat", ("1", "1", "60", "60"), "0")]))
    voc.split("s", ["nosize", "zero", "text", "wrong"])
    dataset = load_voc(voc.root, "s")
    records = _by_id(dataset)
    assert [(r.width, r.height) for r in records.values()] == [(50, 70), (50, 70), (50, 70), (90, 70)]
    np.testing.assert_array_equal(records["wrong"].boxes, [[0, 0, 60, 60]])  # fits the real 90 px width
    mismatch = [p for p in dataset.problems if "<size>" in p]
    assert len(mismatch) == 1 and "wrong.xml" in mismatch[0]
    assert "says 50x70" in mismatch[0] and "is 90x70" in mismatch[0]
    # the three 50 px wide images clip the 60 px box, and say so
    assert sum("clipped" in p for p in dataset.problems) == 3 and len(dataset.problems) == 4


def test_image_found_by_id_when_filename_is_missing_or_wrong(voc: VOCFolder) -> None:
    voc.image("noname.png", 20, 20)
    voc.image("wrongname.jpeg", 20, 20)
    voc.image("upper.PNG", 20, 20)
    voc.image("other.jpg", 20, 20)
    voc.image("pathname.bmp", 20, 20)
    voc.image("stem-differs.png", 20, 20)
    box = [("cat", ("1", "1", "5", "5"), "0")]
    voc.xml("noname", _xml("noname", None, ("20", "20"), box))
    voc.xml("wrongname", _xml("wrongname", "does_not_exist.jpg", ("20", "20"), box))
    voc.xml("upper", _xml("upper", "upper.jpg", ("20", "20"), box))
    voc.xml("copied", _xml("copied", "other.jpg", ("20", "20"), box))  # no copied.* image: use the filename
    voc.xml("pathname", _xml("pathname", r"C:\data\pathname.BMP", ("20", "20"), box))
    voc.xml("other", _xml("other", "stem-differs.png", ("20", "20"), box))  # the id's own image wins
    voc.split("s", ["noname", "wrongname", "upper", "copied", "pathname", "other"])
    dataset = load_voc(voc.root, "s")
    assert dataset.problems == []
    names = {r.image_id: r.path.name for r in dataset.records}
    assert names == {"noname": "noname.png", "wrongname": "wrongname.jpeg", "upper": "upper.PNG",
                     "copied": "other.jpg", "pathname": "pathname.bmp", "other": "other.jpg"}


def test_split_file_errors_and_parsing(voc: VOCFolder) -> None:
    voc.split("other", ["a"])
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Main/absent\.txt.*other"):
        load_voc(voc.root, "absent")
    voc.split("empty", ["", "   "])
    with pytest.raises(ValueError, match=r"empty\.txt lists no image ids"):
        load_voc(voc.root, "empty")
    voc.split("flags", ["b  1", "a -1", "", "b 1", "c"])
    assert read_split_ids(voc.root, "flags") == ["b", "a", "c"]
    with pytest.raises(FileNotFoundError, match="JPEGImages"):
        (voc.root / "JPEGImages").rmdir()
        load_voc(voc.root, "flags")


def test_fit_and_holdout_parts_partition_a_split_by_id(voc: VOCFolder) -> None:
    ids = [f"{k:06d}" for k in range(200)]
    voc.split("big", ids)
    fit, holdout = read_split_ids(voc.root, "big-fit"), read_split_ids(voc.root, "big-holdout")
    assert sorted(fit + holdout) == ids and not set(fit) & set(holdout)
    assert fit == [i for i in ids if i not in holdout]  # the split's order is kept
    assert 25 <= len(holdout) <= 55  # about a fifth
    # membership depends on the id alone, not on the other ids or their order
    voc.split("few", list(reversed(ids[:50])))
    assert read_split_ids(voc.root, "few-holdout") == [i for i in reversed(ids[:50]) if i in holdout]
    assert all(in_holdout(i) for i in holdout)
    voc.split("big-holdout", ["000001"])  # a real file of that name wins
    assert read_split_ids(voc.root, "big-holdout") == ["000001"]
    voc.split("one", [next(i for i in ids if not in_holdout(i))])
    with pytest.raises(ValueError, match=r"split one-holdout: .*one\.txt leaves no image"):
        read_split_ids(voc.root, "one-holdout")
    with pytest.raises(FileNotFoundError, match=r"absent\.txt"):
        read_split_ids(voc.root, "absent-fit")


def test_nothing_usable_is_an_error_naming_the_split(voc: VOCFolder) -> None:
    voc.split("s", ["ghost"])
    with pytest.raises(ValueError, match=r"no usable image in split s .*ghost\.xml"):
        load_voc(voc.root, "s")


def test_given_class_list_is_checked(voc: VOCFolder) -> None:
    voc.image("a.jpg", 20, 20)
    voc.xml("a", _xml("a", "a.jpg", ("20", "20"), [("cat", ("1", "1", "5", "5"), "0")]))
    voc.split("s", ["a"])
    with pytest.raises(ValueError, match="repeats"):
        load_voc(voc.root, "s", classes=["cat", "cat"])
    with pytest.raises(ValueError, match="blank"):
        load_voc(voc.root, "s", classes=["cat", " "])


def test_discover_classes_is_sorted_unique_over_the_split(voc: VOCFolder) -> None:
    box = ("1", "1", "2", "2")
    voc.xml("a", _xml("a", None, None, [("zebra", box, "0"), ("ant", box, "0")]))
    voc.xml("b", _xml("b", None, None, [("ant", box, "0"), (" mole ", box, "0")]))
    voc.xml("c", _xml("c", None, None, [("excluded", box, "0")]))
    voc.xml("d", "broken")
    assert discover_classes(voc.root, ["a", "b", "d"]) == ["ant", "mole", "zebra"]


def test_write_voc_annotation_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "Annotations" / "im_1.xml"
    objects = [("circle", (1, 2, 30, 40), False), ("star", (5, 6.5, 7, 8), True)]
    write_voc_annotation(path, "im_1", "im_1.jpg", 64, 48, objects)
    assert [p.name for p in path.parent.iterdir()] == ["im_1.xml"]  # no temp file left
    root = ET.parse(path).getroot()
    assert root.findtext("size/width") == "64" and root.findtext("size/height") == "48"
    assert [o.findtext("bndbox/ymin") for o in root.iter("object")] == ["2", "6.5"]
    annotation = parse_annotation(path)
    assert annotation.filename == "im_1.jpg" and (annotation.width, annotation.height) == (64, 48)
    assert annotation.names == ["circle", "star"] and annotation.problems == []
    np.testing.assert_array_equal(annotation.boxes, [[0, 1, 30, 40], [4, 5.5, 7, 8]])
    np.testing.assert_array_equal(annotation.difficult, [False, True])
    with pytest.raises(ValueError, match="does not match image id"):
        write_voc_annotation(tmp_path / "other.xml", "im_1", "im_1.jpg", 64, 48, objects)


# ---------------------------------------------------------------- real data


def _reference_boxes(xml_path: Path) -> tuple[list[str], np.ndarray]:
    """Plain reading of a VOC XML: names and (xmin-1, ymin-1, xmax, ymax) in float64."""
    names, boxes = [], []
    for obj in ET.parse(xml_path).getroot().findall("object"):
        names.append(obj.findtext("name").strip())
        b = obj.find("bndbox")
        shifts = (("xmin", 1), ("ymin", 1), ("xmax", 0), ("ymax", 0))
        boxes.append([float(b.findtext(tag)) - shift for tag, shift in shifts])
    return names, np.array(boxes, dtype=np.float64).reshape(-1, 4)


def test_real_dev_val_loads_completely() -> None:
    if not (REAL_VOC / "ImageSets" / "Main" / "dev_val.txt").is_file():
        pytest.skip(f"real VOC data absent at {REAL_VOC}")
    dataset = load_voc(REAL_VOC, "dev_val")
    assert len(dataset.records) == 500 and dataset.problems == []
    assert len(dataset.classes) == 20 and dataset.classes == sorted(dataset.classes)
    assert [r.image_id for r in dataset.records] == read_split_ids(REAL_VOC, "dev_val")
    for record in dataset.records:
        names, boxes = _reference_boxes(REAL_VOC / "Annotations" / f"{record.image_id}.xml")
        assert [dataset.classes[i] for i in record.labels] == names
        np.testing.assert_array_equal(record.boxes, boxes)
        assert (record.boxes[:, :2] >= 0).all() and (record.boxes[:, 2] <= record.width).all()
        assert (record.boxes[:, 3] <= record.height).all()
        assert (record.boxes[:, 2:] > record.boxes[:, :2]).all()
    first = dataset.records[0]
    assert load_image(first.path).shape == (first.height, first.width, 3)
