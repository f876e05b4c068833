"""Proposals from elsewhere (EdgeBoxes, another method, a user's file), read and checked.

Formats (``source`` is a folder or a file):
- a folder with one file per image id: ``<id>.json`` holding ``[[x1, y1, x2, y2], ...]`` (or
  ``{"boxes": [[...], ...]}``), or ``<id>.npz`` with an array ``boxes`` (M x 4).  The file name
  is the image id, or its escaped spelling (``proposals.cache.escape_image_id``) for ids that
  are not safe file names;
- one ``.json`` file mapping every image id to its list ``[[x1, y1, x2, y2], ...]``.

Coordinates are 0-based continuous pixels of the original image, as everywhere in this project
(a VOC-style 1-based inclusive box ``xmin ymin xmax ymax`` is ``xmin-1, ymin-1, xmax, ymax``),
ranked best first if the method ranks them.  An image may have no proposals (an empty list),
said in a warning naming the file and the image id.

Decisions:
- Boxes are checked on read as the selective-search cache is (finite, ``x1 < x2``,
  ``y1 < y2``, inside the image), but a bad box is refused with a ValueError naming the file
  and the image id, never skipped: the user's file is wrong and should be fixed, not silently
  recomputed.  An image id missing from the source is refused the same way.
- ``load_proposals`` is the one entry point of training and testing: selective search through
  the per-dataset cache when ``source`` is None, this reader otherwise (config key
  ``proposals.source``, set by ``--proposals``).
"""
from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from detector.core.boxes import box_problems
from detector.core.records import ImageRecord
from proposals.cache import escape_image_id, load_or_compute_proposals

log = logging.getLogger(__name__)


def check_boxes(boxes: object, width: int, height: int, where: str) -> np.ndarray:
    """Float32 M x 4 boxes, or a ValueError naming ``where`` (file and image id) and the problem."""
    try:
        array = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: boxes must be a list of [x1, y1, x2, y2] numbers ({error})") from error
    if array.size == 0:
        log.warning("%s: no proposals: the image gets no detections and gives no training windows", where)
        return np.zeros((0, 4), np.float32)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{where}: boxes must be a list of [x1, y1, x2, y2], got shape {array.shape}")
    for what, bad in box_problems(array, width, height):
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{where}: {int(bad.sum())} box(es) {what}, first row {row}: {array[row].tolist()}")
    return array.astype(np.float32)


def _read_json(path: Path) -> object:
    """A JSON file's content, or a ValueError naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"proposals file {path} is not readable JSON: {error}") from error


class ExternalProposals:
    """Checked boxes per image id from a folder of per-image files or one JSON file."""

    def __init__(self, source: str | Path) -> None:
        self.source = Path(source)
        if not self.source.exists():
            raise FileNotFoundError(f"proposals source {self.source} does not exist")
        self._table: dict | None = None
        if self.source.is_file():
            table = _read_json(self.source)
            if not isinstance(table, dict):
                raise ValueError(f"proposals file {self.source} must map image ids to box lists")
            self._table = table

    def _file(self, image_id: str) -> Path:
        """The per-image file of ``image_id`` in the folder (plain or escaped id, .json or .npz)."""
        for stem in dict.fromkeys((image_id, escape_image_id(image_id))):
            for suffix in (".json", ".npz"):
                path = self.source / f"{stem}{suffix}"
                if "/" not in stem and path.is_file():
                    return path
        raise ValueError(f"proposals folder {self.source} has no {escape_image_id(image_id)}.json or .npz "
                         f"for image id {image_id!r}")

    def load(self, image_id: str, width: int, height: int) -> np.ndarray:
        """The checked boxes of one image (float32 M x 4)."""
        if self._table is not None:
            if image_id not in self._table:
                raise ValueError(f"proposals file {self.source} has no entry for image id {image_id!r}")
            return check_boxes(self._table[image_id], width, height,
                               f"proposals file {self.source}, image id {image_id!r}")
        path = self._file(image_id)
        where = f"proposals file {path}, image id {image_id!r}"
        if path.suffix == ".npz":
            try:
                with np.load(path, allow_pickle=False) as data:
                    boxes = data["boxes"]
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
                raise ValueError(f"{where}: not an .npz with an array 'boxes' ({error})") from error
        else:
            content = _read_json(path)
            boxes = content.get("boxes") if isinstance(content, dict) else content
            if boxes is None:
                raise ValueError(f"{where}: a JSON object needs a 'boxes' list")
        return check_boxes(boxes, width, height, where)


def load_external_proposals(source: str | Path, records: Sequence[ImageRecord]) -> dict[str, np.ndarray]:
    """Checked proposals of every record from ``source`` (any bad or missing entry is a ValueError)."""
    reader = ExternalProposals(source)
    return {r.image_id: reader.load(r.image_id, r.width, r.height) for r in records}


def load_proposals(root: str | Path, records: Sequence[ImageRecord], mode: str = "fast", max_side: int = 500,
                   workers: int = 2, progress: bool = True, source: str | Path | None = None
                   ) -> dict[str, np.ndarray]:
    """Proposals of ``records``: from ``source`` when given, else selective search (cached)."""
    if source is not None:
        return load_external_proposals(source, records)
    return load_or_compute_proposals(root, records, mode, max_side, workers, progress)
