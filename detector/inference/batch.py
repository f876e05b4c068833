"""A trained detector over many image files: drawn copies and detection records, streamed.

``predict_files`` is what ``tools/predict.py`` runs after parsing its arguments.  Decisions:
- Records are streamed: each image's record is appended to ``detections.jsonl`` (one JSON object
  per line, flushed) as soon as it is made, so an interrupted or killed run keeps every record
  written so far; ``detections.json`` (the list of all records) is written atomically at the
  end, as before.
- The folder holds one run, as a test's result folder does (``detector.core.folders``): ``run.json``
  marks it incomplete before anything else is written and lists every drawn copy the run will
  write; an earlier run's records and drawn copies (those its ``run.json`` or records list) are
  removed first; ``run.json`` says complete after ``detections.json``.
- Photos are read turned by their EXIF orientation (``load_image(exif_orientation=True)``).
- A file that cannot be read, or whose proposals are refused, is named and skipped; a write that
  fails (full disk) stops the run (``OSError``, naming the file).
- An image with no detection above the threshold says so on its drawn copy (a caption), as well
  as in its record (``boxes: []``).
- Progress is a tqdm bar over the files (``progress=False`` silences it).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from detector.core.folders import PREDICT_OUTPUTS, RECORDS_FILE, STREAM_FILE, begin_run, finish_run
from detector.core.images import IMAGE_SUFFIXES, ImageReadError, load_image
from detector.core.io import write_json_atomic
from detector.visualization.draw import draw_label, save_image

log = logging.getLogger(__name__)



def image_files(inputs: Sequence[Path]) -> list[Path]:
    """The image files named by ``inputs`` (files as given, folders' images sorted by name)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files.extend(sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            files.append(item)
    return files


def check_out_folder(out: Path, inputs: Sequence[Path]) -> None:
    """Refuse an ``out`` that is an input folder, the folder of an input file or holds an input (the
    drawn copies would replace the photos), before any work."""
    resolved = Path(out).resolve()
    for item in map(Path, inputs):
        item = item.resolve()
        folder = item if item.is_dir() else item.parent
        if folder == resolved or resolved in item.parents:
            raise ValueError(f"--out {out} holds the input {item}: its drawn copies would replace the "
                             "images; write the predictions to another folder")


def drawn_names(files: Sequence[Path]) -> list[str]:
    """Output file name of each drawn image: its stem, .png for PNG inputs, .jpg otherwise; made
    unique when two inputs share a stem."""
    taken: set[str] = set(PREDICT_OUTPUTS)
    names = []
    for path in files:
        suffix = ".png" if path.suffix.lower() == ".png" else ".jpg"
        name, number = f"{path.stem}{suffix}", 1
        while name in taken:
            name, number = f"{path.stem}_{number}{suffix}", number + 1
        taken.add(name)
        names.append(name)
    return names


def earlier_drawn(out_dir: Path) -> list[str]:
    """The drawn copies an earlier run's records name (a folder written before ``run.json`` listed them)."""
    names = []
    stream = out_dir / STREAM_FILE
    if stream.is_file():
        for line in stream.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                names.append(json.loads(line)["drawn"])
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line
    return [name for name in names if isinstance(name, str) and Path(name).name == name]


@dataclass
class FilesSummary:
    """What ``predict_files`` did: the records written and the files it could not use ("path (why)")."""

    records: list[dict[str, Any]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def predict_files(detector: Any, files: Sequence[Path], out_dir: Path, threshold: float,
                  external: Any = None, progress: bool = True) -> FilesSummary:
    """Run ``detector`` (a ``Detector``) on ``files``; write a drawn copy of each and the records
    (module docstring) into ``out_dir``; ``external``: an ``ExternalProposals`` or None."""
    out_dir = Path(out_dir)
    names = drawn_names(files)
    stale = earlier_drawn(out_dir)
    begin_run(out_dir, {"model": getattr(detector.model, "source", None)}, PREDICT_OUTPUTS, {"writes": names})
    for name in stale:
        (out_dir / name).unlink(missing_ok=True)
    summary = FilesSummary()
    with open(out_dir / STREAM_FILE, "w", encoding="utf-8") as stream:
        for path, name in tqdm(list(zip(files, names)), desc="predicting", unit="img", disable=not progress):
            try:
                image = load_image(path, exif_orientation=True)
                height, width = image.shape[:2]
                boxes = external.load(path.stem, width, height) if external is not None else None
                found = detector.predict(image, threshold, proposals=boxes)
            except (ImageReadError, ValueError) as error:
                log.debug("skipping %s: %s", path, error)
                summary.failed.append(f"{path} ({error})")
                continue
            drawn = found.draw()
            if len(found) == 0:
                draw_label(drawn, f"no detection above {threshold:g}", 0, 0, (90, 90, 90), inside=True)
                log.info("%s: no detection above %g", path, threshold)
            save_image(out_dir / name, drawn)
            record = {"file": str(path), "drawn": name, **found.to_dict()}
            summary.records.append(record)
            stream.write(json.dumps(record) + "\n")
            stream.flush()
            os.fsync(stream.fileno())
    if summary.records:
        write_json_atomic(out_dir / RECORDS_FILE, summary.records)
    finish_run(out_dir)
    return summary
