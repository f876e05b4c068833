"""Reader (and writer) for any dataset in the PASCAL VOC2007 folder layout.

Layout: ``Annotations/<id>.xml``, ``JPEGImages/<id>.<ext>``, ``ImageSets/Main/<split>.txt``.
Ids are arbitrary strings (the first whitespace-separated token of each split line, so the
class-specific ``<id> <flag>`` files read too); class names are whatever the XMLs say.

Bad input never crashes the whole load and never passes silently:
- missing dataset folders or split file: ``FileNotFoundError`` naming it; empty split, or a
  split where no image survives: ``ValueError``.
- missing / unparseable XML, missing / unreadable image, an image no trunk can take
  (``detector.core.images.unusable_shape``: long/short side > 62.5, e.g. 2000 x 8): the image
  is skipped.
- unknown class (when ``classes`` is given), missing name, non-numeric or non-finite
  coordinates, zero or negative area, box fully outside the image: the object is dropped.
- box partly outside the image: clipped to it.
Each of these is a line in ``VOCDataset.problems`` naming the file; the first
``MAX_LOGGED_PROBLEMS`` are also logged as warnings, then one summary line, so a messy
dataset does not flood the log.

Decisions:
- Image size: the XML ``<size>`` is checked against a cheap header read of the actual image
  (``detector.core.images.image_size``, no decode); the image wins and a mismatch is a problem.
  A missing or zero ``<size>`` is simply filled from the header.
- The image file is looked up case-insensitively in ``JPEGImages``: first the XML
  ``<filename>`` (its base name) when its stem is the id, then ``<id>`` with each of
  ``IMAGE_SUFFIXES``, then the XML ``<filename>`` whatever its stem.  The id wins over a
  ``<filename>`` naming another image, so a copy-pasted XML cannot attach boxes to the
  wrong picture while a matching image exists.
- Coordinates may be fractional (some tools write them); VOC's 1-based inclusive boxes are
  turned into the project's continuous boxes with ``detector.core.boxes.voc_to_boxes``, so a
  box with ``xmin == xmax`` is one pixel wide, as in the devkit.
- Class names are stripped of surrounding whitespace but keep their case.  Without a given
  class list the classes are the sorted unique names of the split's objects.
- Images whose objects were all dropped (or that have none) are kept: they are valid
  background images for training negatives and for evaluation.
- ``<difficult>``: missing means 0; anything but an integer is a problem and reads as 0.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from tqdm import tqdm

from detector.core.boxes import boxes_to_voc, clip_boxes, voc_to_boxes
from detector.core.images import IMAGE_SUFFIXES, ImageReadError, image_size, unusable_shape
from detector.core.io import write_bytes_atomic
from detector.core.paths import check_name
from detector.core.records import ImageRecord

log = logging.getLogger(__name__)

MAX_LOGGED_PROBLEMS = 20
_COORDINATES = ("xmin", "ymin", "xmax", "ymax")


class AnnotationError(ValueError):
    """An annotation file is missing or cannot be parsed; the message names the file."""


@dataclass
class Annotation:
    """The parsed content of one VOC XML file, before it is checked against its image.

    ``boxes`` are continuous boxes (float32 N x 4) as written, not yet clipped;
    ``width`` / ``height`` are None when the XML lacks a usable ``<size>``.
    """

    filename: str | None
    width: int | None
    height: int | None
    names: list[str]
    boxes: np.ndarray
    difficult: np.ndarray
    problems: list[str] = field(default_factory=list)


@dataclass
class VOCDataset:
    """One split of a dataset: its class list, its usable images, what was wrong.  Both readers give
    one: ``load_voc`` (``root``: the VOC folder) and ``detector.data.coco.load_coco`` (``root``: the
    image folder; ``coco``: the file and its own ids)."""

    root: Path
    split: str
    classes: list[str]
    records: list[ImageRecord]
    problems: list[str]
    skipped: int = 0  # images of the split file refused by the loader (named in ``problems``)
    coco: Any = None  # detector.data.coco.CocoSource of a COCO dataset, else None

    def part(self, part: str) -> "VOCDataset":
        """The split without (``"fit"``) or with only (``"holdout"``) its held-out fifth (``in_holdout``),
        named ``<split>-fit`` / ``<split>-holdout``: what ``--split NAME-fit`` loads."""
        if part not in HOLDOUT_PARTS:
            raise ValueError(f"part must be one of {HOLDOUT_PARTS}, not {part!r}")
        records = [r for r in self.records if in_holdout(r.image_id) == (part == "holdout")]
        if not records:
            raise ValueError(f"split {self.split} leaves no image in its {part} part")
        return dataclasses.replace(self, split=f"{self.split}-{part}", records=records, skipped=0)

    def first(self, count: int) -> "VOCDataset":
        """The split cut to its first ``count`` images (quick runs on a subset; evaluation then
        counts only those images' objects)."""
        if count < 1:
            raise ValueError(f"the number of images must be at least 1, got {count}")
        return dataclasses.replace(self, records=self.records[:count])


def split_file(root: str | Path, split: str) -> Path:
    """Path of a split's id list: ``<root>/ImageSets/Main/<split>.txt`` (a split name that is not a
    plain file name is refused)."""
    return Path(root) / "ImageSets" / "Main" / f"{check_name(split, 'split')}.txt"


HOLDOUT_PARTS = ("fit", "holdout")  # ``SPLIT-fit`` / ``SPLIT-holdout``: SPLIT without / with its held-out fifth


def in_holdout(image_id: str) -> bool:
    """True for the ids of a split's held-out fifth: the first 8 hex digits of the id's SHA-256 are 0 mod 5
    (fixed by the id alone, so neither the file's order nor its other ids move an image)."""
    return int(hashlib.sha256(image_id.encode("utf-8")).hexdigest()[:8], 16) % 5 == 0


def read_split_ids(root: str | Path, split: str) -> list[str]:
    """Image ids of a split, in file order, duplicates removed (with a warning).

    ``SPLIT-fit`` and ``SPLIT-holdout``, when no file of that name exists, are SPLIT's ids without and
    with its held-out fifth (``in_holdout``): hyperparameters are chosen by training on ``-fit`` and
    measuring on ``-holdout``, so that no test split chooses them."""
    base, _, part = split.rpartition("-")
    if part in HOLDOUT_PARTS and base and not split_file(root, split).is_file():
        ids = [i for i in read_split_ids(root, base) if in_holdout(i) == (part == "holdout")]
        if not ids:
            raise ValueError(f"split {split}: {split_file(root, base)} leaves no image in its {part} part")
        return ids
    path = split_file(root, split)
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.txt")) if path.parent.is_dir() else []
        raise FileNotFoundError(
            f"split file {path} not found"
            + (f"; splits there: {', '.join(available)}" if available else "")
        )
    ids: list[str] = []
    seen: set[str] = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        tokens = line.split()
        if not tokens:
            continue
        try:
            check_name(tokens[0], f"split file {path}: image id")
        except ValueError as error:
            log.warning("%s; skipped", error)
            continue
        if tokens[0] in seen:
            log.warning("split file %s lists id %s more than once; using it once", path, tokens[0])
            continue
        seen.add(tokens[0])
        ids.append(tokens[0])
    if not ids:
        raise ValueError(f"split file {path} lists no image ids")
    return ids


def _text(element: ET.Element | None, tag: str) -> str | None:
    """Stripped text of ``element/tag``, None when the child or its text is absent."""
    child = element.find(tag) if element is not None else None
    if child is None or child.text is None:
        return None
    return child.text.strip() or None


def _positive_int(text: str | None) -> int | None:
    """A positive integer from text like ``"500"`` or ``"500.0"``, else None."""
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        return None
    return int(value) if math.isfinite(value) and value >= 1 and value == int(value) else None


def parse_annotation(xml_path: str | Path, class_index: Mapping[str, int] | None = None) -> Annotation:
    """Parse one VOC XML file; objects that are unusable on their own are dropped as problems.

    With ``class_index``, objects whose class is not in it are dropped too.  Raises
    ``AnnotationError`` when the file is missing or is not a VOC annotation.
    """
    xml_path = Path(xml_path)
    try:
        root = ET.parse(xml_path).getroot()
    except FileNotFoundError as error:
        raise AnnotationError(f"annotation {xml_path} not found") from error
    except (ET.ParseError, OSError) as error:
        raise AnnotationError(f"annotation {xml_path} cannot be parsed: {error}") from error
    if root.tag != "annotation":
        raise AnnotationError(f"annotation {xml_path} has root <{root.tag}>, expected <annotation>")

    size = root.find("size")
    problems: list[str] = []
    names: list[str] = []
    boxes: list[list[float]] = []
    difficult: list[bool] = []
    for number, obj in enumerate(root.iter("object"), start=1):
        name = _text(obj, "name")
        where = f"{xml_path}: object {number}" + (f" ({name!r})" if name else "")
        if name is None:
            problems.append(f"{where}: no <name>; object dropped")
            continue
        if class_index is not None and name not in class_index:
            problems.append(f"{where}: unknown class {name!r}; object dropped")
            continue
        bndbox = obj.find("bndbox")
        texts = [_text(bndbox, tag) for tag in _COORDINATES]
        try:
            coordinates = [float(text) for text in texts]  # type: ignore[arg-type]
        except (TypeError, ValueError):
            coordinates = []
        if len(coordinates) != 4 or not all(math.isfinite(c) for c in coordinates):
            shown = ", ".join(f"{tag}={text!r}" for tag, text in zip(_COORDINATES, texts))
            problems.append(f"{where}: missing or non-numeric box ({shown}); object dropped")
            continue
        flag_text = _text(obj, "difficult")
        if flag_text is None:
            flag = 0
        elif flag_text.lstrip("+-").isdigit():
            flag = int(flag_text)
        else:
            problems.append(f"{where}: <difficult> is {flag_text!r}, not an integer; read as 0")
            flag = 0
        names.append(name)
        boxes.append(coordinates)
        difficult.append(flag != 0)

    return Annotation(
        filename=_text(root, "filename"),
        width=_positive_int(_text(size, "width")),
        height=_positive_int(_text(size, "height")),
        names=names,
        boxes=voc_to_boxes(np.array(boxes, dtype=np.float64).reshape(-1, 4)),
        difficult=np.array(difficult, dtype=bool),
        problems=problems,
    )


def _class_names(annotations: Iterable[Annotation]) -> list[str]:
    """Sorted unique object names."""
    return sorted({name for annotation in annotations for name in annotation.names})


def discover_classes(root: str | Path, ids: Iterable[str]) -> list[str]:
    """Sorted unique object names over the given images' XMLs (unreadable XMLs are skipped)."""
    annotations = []
    for image_id in ids:
        try:
            annotations.append(parse_annotation(Path(root) / "Annotations" / f"{image_id}.xml"))
        except AnnotationError as error:
            log.debug("skipped while discovering classes: %s", error)
    return _class_names(annotations)


def _image_index(image_dir: Path) -> dict[str, str]:
    """Lower-cased file name -> actual file name, for case-insensitive lookups in one listing."""
    index: dict[str, str] = {}
    with os.scandir(image_dir) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            index.setdefault(entry.name.lower(), entry.name)
    return index


def _find_image(index: Mapping[str, str], image_id: str, xml_filename: str | None) -> str | None:
    """File name of an id's image in ``JPEGImages`` (see the module notes for the order)."""
    candidates = [f"{image_id}{ext}" for ext in IMAGE_SUFFIXES]
    if xml_filename:
        base = PurePosixPath(xml_filename.replace("\\", "/")).name
        if PurePosixPath(base).stem.lower() == image_id.lower():
            candidates.insert(0, base)
        else:
            candidates.append(base)
    for name in candidates:
        if name.lower() in index:
            return index[name.lower()]
    return None


def _checked_boxes(
    boxes: np.ndarray, names: Sequence[str], width: int, height: int, where: str, problems: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """``(clipped boxes, keep mask)``: boxes with positive area inside the image are kept."""
    clipped = clip_boxes(boxes, width, height)
    empty = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    outside = ~empty & ((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1]))
    cut = ~empty & ~outside & np.any(clipped != boxes, axis=1)
    image = f"the {width}x{height} image"
    for flags, outcome in (
        (empty, "has zero or negative area; object dropped"),
        (outside, f"lies outside {image}; object dropped"),
        (cut, f"extends outside {image}; clipped"),
    ):
        for i in np.flatnonzero(flags):
            problems.append(f"{where}: {names[i]!r} box (VOC {boxes_to_voc(boxes[i])[0].tolist()}) {outcome}")
    return clipped, ~(empty | outside)


def _record(
    root: Path,
    image_id: str,
    annotation: Annotation,
    image_names: Mapping[str, str],
    class_index: Mapping[str, int],
    problems: list[str],
) -> ImageRecord | None:
    """The checked record of one image, or None (with a problem) when the image is unusable."""
    xml_path = root / "Annotations" / f"{image_id}.xml"
    name = _find_image(image_names, image_id, annotation.filename)
    if name is None:
        shown = f"{image_id}{{{','.join(IMAGE_SUFFIXES)}}}"
        if annotation.filename:
            shown += f" or {annotation.filename}"
        problems.append(f"{xml_path}: image {root / 'JPEGImages' / shown} not found; image skipped")
        return None
    path = root / "JPEGImages" / name
    try:
        width, height = image_size(path)
    except ImageReadError as error:
        problems.append(f"{error}; image {image_id} skipped")
        return None
    unusable = unusable_shape(width, height)
    if unusable is not None:
        problems.append(f"{path}: {unusable}; no trunk can take it; image {image_id} skipped")
        return None
    if annotation.width is not None and annotation.height is not None and (
        (annotation.width, annotation.height) != (width, height)
    ):
        problems.append(
            f"{xml_path}: <size> says {annotation.width}x{annotation.height} but {path} is "
            f"{width}x{height}; using the image's size"
        )
    boxes, keep = _checked_boxes(annotation.boxes, annotation.names, width, height, str(xml_path), problems)
    return ImageRecord(
        image_id=image_id,
        path=path,
        width=width,
        height=height,
        boxes=boxes[keep].astype(np.float32),
        labels=np.array([class_index[n] for n, k in zip(annotation.names, keep) if k], dtype=np.int64),
        difficult=annotation.difficult[keep],
    )


def report_problems(problems: Sequence[str], split: str) -> None:
    """Log the first problems as warnings and a count of the rest."""
    for problem in problems[:MAX_LOGGED_PROBLEMS]:
        log.warning("%s", problem)
    if len(problems) > MAX_LOGGED_PROBLEMS:
        log.warning(
            "... and %d more problems in split %s (all are in VOCDataset.problems)",
            len(problems) - MAX_LOGGED_PROBLEMS,
            split,
        )


def _checked_class_list(classes: Sequence[str]) -> list[str]:
    """A given class list as a list, refusing empty, blank or repeated names."""
    names = [str(name).strip() for name in classes]
    if not names or any(not name for name in names):
        raise ValueError(f"class list {list(classes)!r} is empty or holds a blank name")
    for name in names:
        check_name(name, "class name")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"class list repeats {repeated}")
    return names


def load_voc(root: str | Path, split: str, classes: Sequence[str] | None = None) -> VOCDataset:
    """Read one split of a VOC-layout dataset, skipping and reporting what is unusable.

    ``classes`` fixes the class list (and its label order); objects of other classes are
    dropped.  Without it the classes are discovered from the split's annotations.
    """
    root = Path(root).expanduser()
    for folder in (root, root / "Annotations", root / "JPEGImages"):
        if not folder.is_dir():
            raise FileNotFoundError(f"VOC dataset folder {folder} not found")
    ids = read_split_ids(root, split)
    class_list = _checked_class_list(classes) if classes is not None else None
    filter_index = {name: i for i, name in enumerate(class_list)} if class_list is not None else None

    problems: list[str] = []
    annotations: dict[str, Annotation] = {}
    for image_id in tqdm(ids, desc=f"reading {split}", unit="img", leave=False, disable=None):
        try:
            annotation = parse_annotation(root / "Annotations" / f"{image_id}.xml", filter_index)
        except AnnotationError as error:
            problems.append(f"{error}; image {image_id} skipped")
            continue
        problems.extend(annotation.problems)
        annotations[image_id] = annotation

    if class_list is None:
        class_list = _class_names(annotations.values())
        for name in class_list:
            check_name(name, f"class name (in the annotations of {root} split {split})")
    class_index = {name: i for i, name in enumerate(class_list)}

    image_names = _image_index(root / "JPEGImages")
    records = []
    for image_id, annotation in annotations.items():
        record = _record(root, image_id, annotation, image_names, class_index, problems)
        if record is not None:
            records.append(record)

    report_problems(problems, split)
    if not records:
        raise ValueError(
            f"no usable image in split {split} of {root} ({len(problems)} problems, first: {problems[:1]})"
        )
    if not class_list:
        raise ValueError(f"no object in any annotation of split {split} of {root}, so no classes")
    log.info(
        "VOC %s/%s: %d images, %d objects, %d classes, %d problems",
        root, split, len(records), sum(len(r.boxes) for r in records), len(class_list), len(problems),
    )
    return VOCDataset(root=root, split=split, classes=class_list, records=records, problems=problems,
                      skipped=len(ids) - len(records))


def write_voc_annotation(
    path: str | Path,
    image_id: str,
    filename: str,
    width: int,
    height: int,
    objects: Iterable[tuple[str, Sequence[float], bool | int]],
) -> None:
    """Write a standard VOC XML file atomically (temp file in the same folder, then rename).

    ``objects`` are ``(class_name, (xmin, ymin, xmax, ymax) 1-based inclusive, difficult)``.
    ``path`` must be ``<id>.xml`` so the reader finds it; ``<folder>`` is the image folder's
    name, as labelImg writes it (not the dataset's, which may be a temporary build folder,
    so the bytes depend only on the arguments); integral coordinates are written as
    integers, others as decimals.
    """
    path = Path(path)
    if path.name != f"{image_id}.xml":
        raise ValueError(f"annotation path {path} does not match image id {image_id!r}")

    def number(value: float) -> str:
        return str(int(value)) if float(value).is_integer() else repr(float(value))

    annotation = ET.Element("annotation")
    ET.SubElement(annotation, "folder").text = "JPEGImages"
    ET.SubElement(annotation, "filename").text = filename
    size = ET.SubElement(annotation, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(int(value))
    ET.SubElement(annotation, "segmented").text = "0"
    for name, voc_box, difficult in objects:
        obj = ET.SubElement(annotation, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = str(int(bool(difficult)))
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(_COORDINATES, voc_box, strict=True):
            ET.SubElement(bndbox, tag).text = number(value)
    ET.indent(annotation, space="\t")
    data = (ET.tostring(annotation, encoding="unicode") + "\n").encode("utf-8")

    write_bytes_atomic(path, data)
