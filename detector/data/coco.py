"""Reader (and writer) for datasets in COCO JSON: one annotation file and a folder of images.

The file is read with pycocotools' ``COCO`` API (its messages captured), into the same records a
VOC-layout dataset gives, so every stage after the reader is the same:
- Classes are the category names in category-id order (ids may be any integers, not contiguous);
  ``classes`` selects a subset, as ``--classes`` does for VOC.
- A box ``[x, y, w, h]`` is the continuous box ``(x, y, x + w, y + h)``, exactly: COCO's pixel
  coordinates are the project's (a VOC box ``xmin ymin xmax ymax`` is ``[xmin - 1, ymin - 1,
  xmax - xmin + 1, ymax - ymin + 1]`` in COCO).
- ``iscrowd`` boxes are ignore regions, as VOC's ``difficult`` objects: neither positives nor
  negatives in training, neither TP nor FP in evaluation.  Images without annotations are kept as
  background images.
- An image's id in the project is its ``file_name`` without the suffix (sub-folders kept: a
  ``file_name`` may hold them), whitespace and ``%`` %-escaped; so the same images as a VOC
  dataset's ``JPEGImages`` have the same ids, the same records and share its cached proposals and
  conv maps (``detector.core.paths.cache_root`` keys a dataset by its image folder).  The file's own
  image and category ids are kept (``CocoSource``) for ``detections_coco.json`` and ``COCOeval``.
- Bad input is named: the file is refused when it is not JSON or not a COCO file, or when a
  category name cannot be a file name; an image is skipped (and counted) when its file is missing
  or unreadable, its id repeats an earlier image's, or no trunk can take it; an annotation is
  dropped when its category is unknown, its box is not four finite numbers, has ``w`` or ``h`` <= 0
  or lies outside the image (a box partly outside is clipped), as the VOC reader does.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote

import numpy as np

from detector.core.boxes import clip_boxes
from detector.core.images import ImageReadError, image_size, unusable_shape
from detector.core.io import write_json_atomic
from detector.core.paths import check_name
from detector.core.records import ImageRecord
from detector.data.voc import VOCDataset, report_problems

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CocoSource:
    """Where a dataset came from in COCO terms: its file, and the file's ids of each image and class."""

    annotation_file: Path
    image_ids: dict[str, int]  # the project's image id -> the file's image id
    category_ids: list[int]  # the file's category id of each class, in the dataset's class order


def image_key(file_name: str) -> str:
    """The project's id of an image: its ``file_name`` without the suffix, sub-folders kept,
    whitespace and ``%`` escaped (module notes)."""
    path = PurePosixPath(str(file_name).replace("\\", "/"))
    stem = str(path.with_suffix("")) if path.suffix else str(path)
    return quote(stem, safe="/!$&'()*+,;=:@[]~-._")


def read_coco(annotation_file: str | Path):
    """The file as a pycocotools ``COCO`` object; a file that is missing, not JSON or not a COCO
    file is refused naming it."""
    from pycocotools.coco import COCO

    path = Path(annotation_file)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file {path} not found")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not readable JSON ({error})") from error
    if not isinstance(content, dict) or not isinstance(content.get("images"), list) \
            or not isinstance(content.get("categories"), list) or not isinstance(content.get("annotations", []), list):
        raise ValueError(f"{path} is not a COCO annotation file: it needs lists \"images\", \"categories\" and "
                         "\"annotations\"")
    content.setdefault("annotations", [])
    coco = COCO()
    coco.dataset = content
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
    except (KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a COCO annotation file: an entry lacks {error}") from error
    return coco


def _categories(coco, path: Path, classes: Sequence[str] | None) -> tuple[list[str], list[int]]:
    """The class names in category-id order (or the ``classes`` subset) and their category ids."""
    categories = sorted(coco.dataset["categories"], key=lambda c: c["id"])
    names = [str(c.get("name", "")).strip() for c in categories]
    for name, category in zip(names, categories):
        check_name(name, f"{path}: category {category['id']} name")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{path}: category names repeat: {repeated}")
    ids = [int(c["id"]) for c in categories]
    if classes is None:
        return names, ids
    unknown = [name for name in classes if name not in names]
    if unknown:
        raise ValueError(f"classes {unknown} are not categories of {path} ({names})")
    return list(classes), [ids[names.index(name)] for name in classes]


def _image_record(image: dict, coco, images_dir: Path, class_of: dict[int, int], path: Path,
                  problems: list[str]) -> ImageRecord | None:
    """One image's checked record, or None (with a problem) when it is unusable."""
    file_name = str(image.get("file_name", ""))
    where = f"{path}: image {image.get('id')} ({file_name})"
    picture = images_dir / file_name
    try:
        width, height = image_size(picture)
    except ImageReadError as error:
        problems.append(f"{where}: {error.reason}; image skipped")
        return None
    unusable = unusable_shape(width, height)
    if unusable is not None:
        problems.append(f"{where}: {unusable}; no trunk can take it; image skipped")
        return None
    if (image.get("width"), image.get("height")) not in ((None, None), (width, height)):
        problems.append(f"{where}: the file says {image.get('width')}x{image.get('height')} but the image is "
                        f"{width}x{height}; using the image's size")
    boxes, labels, crowd = [], [], []
    for annotation in coco.imgToAnns.get(image["id"], []):
        what = f"{where}: annotation {annotation.get('id')}"
        category = annotation.get("category_id")
        if category not in class_of:
            if category not in coco.cats:
                problems.append(f"{what}: unknown category id {category!r}; dropped")
            continue  # a category left out by --classes
        bbox = annotation.get("bbox")
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            problems.append(f"{what}: bbox {bbox!r} is not four numbers; dropped")
            continue
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
            problems.append(f"{what}: bbox {bbox!r} has a width or height <= 0 (or is not finite); dropped")
            continue
        box = np.array([[x, y, x + w, y + h]])
        clipped = clip_boxes(box, width, height)
        if clipped[0, 2] <= clipped[0, 0] or clipped[0, 3] <= clipped[0, 1]:
            problems.append(f"{what}: bbox {bbox!r} lies outside the {width}x{height} image; dropped")
            continue
        if not np.array_equal(clipped, box):
            problems.append(f"{what}: bbox {bbox!r} extends outside the {width}x{height} image; clipped")
        boxes.append(clipped[0])
        labels.append(class_of[category])
        crowd.append(bool(annotation.get("iscrowd", 0)))
    return ImageRecord(image_key(file_name), picture, width, height,
                       np.array(boxes, dtype=np.float32).reshape(-1, 4), np.array(labels, dtype=np.int64),
                       np.array(crowd, dtype=bool))


def load_coco(annotation_file: str | Path, images_dir: str | Path, classes: Sequence[str] | None = None,
              split: str | None = None) -> VOCDataset:
    """Read a COCO JSON dataset (module notes); ``split``: the name its results take (default: the
    file's stem, e.g. ``val`` for ``val.json``)."""
    path = Path(annotation_file)
    images_dir = Path(images_dir).expanduser()
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image folder {images_dir} not found")
    coco = read_coco(path)
    names, category_ids = _categories(coco, path, classes)
    class_of = {category: k for k, category in enumerate(category_ids)}
    problems: list[str] = []
    records, file_ids, seen_ids = [], {}, set()
    for image in coco.dataset["images"]:
        if not isinstance(image, dict) or "id" not in image:
            problems.append(f"{path}: an image entry without an id ({str(image)[:80]}); skipped")
            continue
        if image["id"] in seen_ids:
            problems.append(f"{path}: image id {image['id']} ({image.get('file_name')}) repeats an earlier image's; "
                            "skipped")
            continue
        seen_ids.add(image["id"])
        record = _image_record(image, coco, images_dir, class_of, path, problems)
        if record is None:
            continue
        if record.image_id in file_ids:
            problems.append(f"{path}: image {image['id']} ({image.get('file_name')}) has the same name as image "
                            f"{file_ids[record.image_id]} but for its suffix; skipped")
            continue
        file_ids[record.image_id] = int(image["id"])
        records.append(record)
    split = split or path.stem
    report_problems(problems, split)
    if not records:
        raise ValueError(f"no usable image in {path} ({len(problems)} problems, first: {problems[:1]})")
    log.info("COCO %s: %d images, %d objects, %d classes, %d problems", path, len(records),
             sum(len(r.boxes) for r in records), len(names), len(problems))
    return VOCDataset(root=images_dir, split=check_name(split, "split"), classes=names, records=records,
                      problems=problems, skipped=len(coco.dataset["images"]) - len(records),
                      coco=CocoSource(path, file_ids, category_ids))


def write_coco(dataset: VOCDataset, path: str | Path, images_dir: str | Path) -> Path:
    """Write a dataset's records as a COCO annotation file whose ``file_name`` are relative to
    ``images_dir`` (category ids 1..K in class order, image ids 1..N in record order; difficult
    objects as ``iscrowd``)."""
    images_dir = Path(images_dir).resolve()
    images, annotations = [], []
    for number, record in enumerate(dataset.records, start=1):
        images.append({"id": number, "file_name": Path(record.path).resolve().relative_to(images_dir).as_posix(),
                       "width": int(record.width), "height": int(record.height)})
        for box, label, crowd in zip(record.boxes.astype(np.float64), record.labels, record.difficult):
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            annotations.append({"id": len(annotations) + 1, "image_id": number, "category_id": int(label) + 1,
                                "bbox": [float(box[0]), float(box[1]), w, h], "area": w * h, "iscrowd": int(crowd)})
    categories = [{"id": k, "name": name, "supercategory": "none"} for k, name in enumerate(dataset.classes, start=1)]
    write_json_atomic(Path(path), {"images": images, "annotations": annotations, "categories": categories})
    return Path(path)
