"""Per-image proposal cache on disk, and its parallel, resumable computation.

Layout: ``cache_root(voc_root)/"proposals"/f"{mode}-{max_side}-v{CACHE_VERSION}-{signature}"``
with one ``<id>.npz`` per image (``default_cache_folder``).  ``signature`` is
``selective_search.search_signature(mode)``, a digest of the mode's settings, so proposals
of an older configuration are never mixed with new ones; ``CACHE_VERSION`` is bumped when
the file format changes.

File format (``.npz``): ``boxes`` float32 (M, 4) continuous boxes in original image
coordinates, ranked; ``image_size`` int64 ``(width, height)`` of the decoded image;
``seconds`` and ``cpu_seconds`` float64, the wall and CPU time selective search took on that
image in a single-threaded worker (CPU time is the figure that does not depend on how busy
the machine was); ``image_digest`` str, the SHA-256 of the image file's bytes it was computed
from (``detector.core.images.image_digest``, about 0.13 ms for a 100 KB JPEG against ~1 s of
selective search; version 2).

Decisions:
- File names: an image id is escaped so any string is a safe, distinct file name: every
  character outside ``[A-Za-z0-9_-]`` becomes ``%XX`` per UTF-8 byte (``.`` too, so ``..``
  or a leading dot cannot occur); a name longer than 200 characters is cut and suffixed
  with a hash of the id.
- Writes are atomic (temporary file in the same folder, then ``os.replace``), so a killed
  run leaves either a complete file or none; a re-run skips every valid file (resume).
- Reads are checked: loadable, ``boxes`` float32 (M, 4), finite, ``x1 < x2``, ``y1 < y2``,
  inside the stored image size, that size equal to the expected one and the stored image
  digest equal to the image file's current one when given (a replaced or edited image under
  the same id is recomputed, never served; version 1 files have no digest and live in the
  ``-v1-`` folder, never read).  A
  broken file is logged as a warning naming it and treated as missing (so
  ``compute_proposals`` recomputes it).
- Parallelism: a ``spawn`` pool (safe with OpenCV and torch threads), ``imap_unordered``
  with ``chunksize=1`` (per-image costs vary a lot), every worker writes its own files and
  runs OpenCV single-threaded.  ``workers <= 1`` computes in this process.
- Concurrent runs on one cache: each image is computed under a lock on its file
  (``detector.core.locks``); a second run waits for it and then finds it cached, so no image is
  searched twice and no file is written by two processes.
- A failing image (unreadable file, size disagreeing with its record, OpenCV error) is
  logged naming the file and listed in the report; the other images go on.
- Several processes under ``torchrun`` (``detector.core.distributed``): ``load_or_compute_proposals``
  has each rank compute its shard of the images (``shard``, strided), waits for every rank
  (``barrier``), then every rank reads the whole cache; no two ranks search the same image.
"""
from __future__ import annotations

import hashlib
import logging
import multiprocessing
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from detector.core import distributed
from detector.core.boxes import box_problems
from detector.core.images import ImageReadError, image_digest, load_image
from detector.core.io import save_atomic
from detector.core.locks import item_lock
from detector.core.paths import cache_root
from detector.core.records import ImageRecord
from proposals.selective_search import search_signature, selective_search

log = logging.getLogger(__name__)

CACHE_VERSION = 2
MAX_NAME_LENGTH = 200
_SAFE_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def escape_image_id(image_id: str) -> str:
    """A file-name-safe, injective spelling of ``image_id`` (see the module notes)."""
    if not image_id:
        raise ValueError("an image id must not be empty")
    escaped = "".join(
        char if char in _SAFE_CHARACTERS else "".join(f"%{byte:02X}" for byte in char.encode("utf-8"))
        for char in image_id
    )
    if len(escaped) > MAX_NAME_LENGTH:
        digest = hashlib.sha1(image_id.encode("utf-8")).hexdigest()
        escaped = f"{escaped[:MAX_NAME_LENGTH - 41]}~{digest}"
    return escaped


def default_cache_folder(voc_root: str | Path, mode: str, max_side: int) -> Path:
    """The proposal cache folder of a dataset for one selective search configuration."""
    tag = f"{mode}-{max_side}-v{CACHE_VERSION}-{search_signature(mode)}"
    return cache_root(voc_root) / "proposals" / tag


@dataclass(frozen=True)
class CacheEntry:
    """The content of one cache file."""

    boxes: np.ndarray
    image_size: tuple[int, int]
    seconds: float
    cpu_seconds: float
    image_digest: str = ""


class ProposalCache:
    """One folder of per-image proposal files (see the module docstring for the format)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def path(self, image_id: str) -> Path:
        """File of an image's proposals."""
        return self.folder / f"{escape_image_id(image_id)}.npz"

    def read(self, image_id: str, image_size: tuple[int, int] | None = None,
             digest: str | None = None) -> CacheEntry | None:
        """The checked entry of an image, or None when it is missing, broken or (``digest`` given)
        made from other image bytes (logged)."""
        path = self.path(image_id)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                entry = CacheEntry(
                    boxes=data["boxes"],
                    image_size=tuple(int(v) for v in data["image_size"]),
                    seconds=float(data["seconds"]),
                    cpu_seconds=float(data["cpu_seconds"]),
                    image_digest=str(data["image_digest"]) if "image_digest" in data.files else "",
                )
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as error:
            log.warning("proposal cache file %s is unreadable (%s); ignoring it", path, error)
            return None
        problem = _entry_problem(entry, image_size)
        if problem is None and digest is not None and entry.image_digest != digest:
            problem = "made from other bytes of the image (replaced or edited)"
        if problem:
            log.warning("proposal cache file %s is invalid (%s); ignoring it", path, problem)
            return None
        return entry

    def load(self, image_id: str, image_size: tuple[int, int] | None = None,
             digest: str | None = None) -> np.ndarray | None:
        """The checked boxes of an image (float32 M x 4), or None when missing, broken or stale."""
        entry = self.read(image_id, image_size, digest)
        return None if entry is None else entry.boxes

    def save(self, image_id: str, boxes: np.ndarray, image_size: tuple[int, int],
             seconds: float = 0.0, cpu_seconds: float = 0.0, digest: str = "") -> Path:
        """Write an image's proposals atomically; ``image_size`` is ``(width, height)``, ``digest``
        the image file's ``image_digest``."""
        entry = CacheEntry(np.asarray(boxes), (int(image_size[0]), int(image_size[1])),
                           float(seconds), float(cpu_seconds), str(digest))
        problem = _entry_problem(entry, None)
        if problem:
            raise ValueError(f"refusing to cache proposals of image {image_id!r}: {problem}")
        path = self.path(image_id)
        self.folder.mkdir(parents=True, exist_ok=True)
        save_atomic(path, lambda handle: np.savez(
            handle, boxes=entry.boxes, image_size=np.array(entry.image_size, np.int64),
            seconds=np.float64(entry.seconds), cpu_seconds=np.float64(entry.cpu_seconds),
            image_digest=np.str_(entry.image_digest)))
        return path


def _entry_problem(entry: CacheEntry, expected_size: tuple[int, int] | None) -> str | None:
    """What is wrong with an entry, or None when it is valid."""
    boxes = entry.boxes
    if boxes.dtype != np.float32 or boxes.ndim != 2 or boxes.shape[1] != 4:
        return f"boxes must be float32 (M, 4), got {boxes.dtype} {boxes.shape}"
    if len(entry.image_size) != 2 or min(entry.image_size) <= 0:
        return f"bad image size {entry.image_size}"
    if expected_size is not None and tuple(entry.image_size) != tuple(expected_size):
        return f"stored image size {entry.image_size} differs from the image's {tuple(expected_size)}"
    problems = box_problems(boxes, *entry.image_size)
    if problems:
        return f"bad boxes: {problems[0][0]}"
    if not (np.isfinite([entry.seconds, entry.cpu_seconds]).all() and min(entry.seconds, entry.cpu_seconds) >= 0):
        return f"bad timings {entry.seconds}, {entry.cpu_seconds}"
    return None


@dataclass
class ComputeReport:
    """What one ``compute_proposals`` call did."""

    computed: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    workers: int = 1
    wall_seconds: float = 0.0

    @property
    def wall_seconds_per_image(self) -> float:
        """Wall-clock seconds per computed image (0 when nothing was computed)."""
        return self.wall_seconds / self.computed if self.computed else 0.0


@dataclass(frozen=True)
class _Task:
    """Everything a worker needs for one image (picklable)."""

    image_id: str
    path: Path
    image_size: tuple[int, int]
    folder: Path
    mode: str
    max_side: int


def _init_worker() -> None:
    """Pool initialiser: one OpenCV thread per worker process."""
    cv2.setNumThreads(1)


def _compute_one(task: _Task) -> tuple[str, str | None]:
    """Compute and cache one image's proposals; returns ``(image_id, error or None)``."""
    try:
        with item_lock(ProposalCache(task.folder).path(task.image_id)):
            return _compute_locked(task)
    except OSError as error:
        return task.image_id, f"{task.path}: {error}"


def _compute_locked(task: _Task) -> tuple[str, str | None]:
    """``_compute_one`` under the image's lock: computes unless another run cached it meanwhile."""
    try:
        digest = image_digest(task.path)
        if ProposalCache(task.folder).read(task.image_id, task.image_size, digest) is not None:
            return task.image_id, None  # another run sharing the cache computed it meanwhile
        image = load_image(task.path)
        size = (image.shape[1], image.shape[0])
        if size != task.image_size:
            raise ValueError(f"image {task.path} is {size[0]}x{size[1]}, its record says "
                             f"{task.image_size[0]}x{task.image_size[1]}")
        start, cpu_start = time.perf_counter(), time.process_time()
        boxes = selective_search(image, mode=task.mode, max_side=task.max_side)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        ProposalCache(task.folder).save(task.image_id, boxes, size, seconds, cpu_seconds, digest)
    except (ImageReadError, ValueError, OSError, cv2.error) as error:
        return task.image_id, f"{task.path}: {error}"
    return task.image_id, None


def compute_proposals(
    records: Sequence[ImageRecord],
    cache: ProposalCache,
    workers: int = 2,
    mode: str = "fast",
    max_side: int = 500,
    progress: bool = True,
) -> ComputeReport:
    """Compute and cache the proposals of every record whose cache file is missing or broken.

    Results are not returned (a dataset's proposals need not fit in memory): read them
    with ``cache.load``.  See the module docstring for parallelism and failures.
    """
    tasks = []
    skipped = 0
    for record in records:
        size = (int(record.width), int(record.height))
        if cache.read(record.image_id, size, _digest_or_none(record.path)) is not None:
            skipped += 1
            continue
        tasks.append(_Task(record.image_id, Path(record.path), size, cache.folder, mode, max_side))
    report = ComputeReport(skipped=skipped, workers=max(1, workers))
    if not tasks:
        return report
    cache.folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    bar = tqdm(total=len(tasks), desc=f"selective search ({mode})", unit="img", disable=not progress)
    if workers <= 1:
        previous_threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            for task in tasks:
                _account(report, *_compute_one(task), bar)
        finally:
            cv2.setNumThreads(previous_threads)
    else:
        context = multiprocessing.get_context("spawn")
        with context.Pool(min(workers, len(tasks)), initializer=_init_worker) as pool:
            for outcome in pool.imap_unordered(_compute_one, tasks, chunksize=1):
                _account(report, *outcome, bar)
    bar.close()
    report.wall_seconds = time.perf_counter() - start
    return report


def _digest_or_none(path: str | Path) -> str | None:
    """The image file's digest, or None when it cannot be read (the worker then names the error)."""
    try:
        return image_digest(path)
    except ImageReadError:
        return None


def _account(report: ComputeReport, image_id: str, error: str | None, bar: tqdm) -> None:
    """Count one finished image in the report (logging a failure) and advance the bar."""
    if error is None:
        report.computed += 1
    else:
        log.error("selective search failed on image %s: %s", image_id, error)
        report.failed.append(image_id)
    bar.update(1)


@dataclass(frozen=True)
class SearchTimings:
    """Mean per-image selective search time stored in a cache, over the images that have it."""

    images: int
    wall_seconds: float
    cpu_seconds: float


def search_timings(records: Sequence[ImageRecord], cache: ProposalCache) -> SearchTimings:
    """Mean single-worker wall and CPU seconds per image recorded in the cache files of ``records``."""
    entries = [cache.read(r.image_id, (r.width, r.height)) for r in records]
    entries = [e for e in entries if e is not None]
    if not entries:
        return SearchTimings(0, 0.0, 0.0)
    return SearchTimings(len(entries), float(np.mean([e.seconds for e in entries])),
                         float(np.mean([e.cpu_seconds for e in entries])))


def load_or_compute_proposals(
    root: str | Path, records: Sequence[ImageRecord], mode: str = "fast", max_side: int = 500,
    workers: int = 2, progress: bool = True
) -> dict[str, np.ndarray]:
    """Proposals of ``records`` (images of the dataset at ``root``) from the dataset's default
    cache, computing missing ones.

    Images whose proposals could not be computed are absent from the result (their
    failure is logged by ``compute_proposals``).  Under ``torchrun`` each rank computes its shard,
    then every rank reads every image's file (module docstring).
    """
    cache = ProposalCache(default_cache_folder(root, mode, max_side))
    compute_proposals(distributed.shard(records), cache, workers, mode, max_side,
                      progress and distributed.is_main())
    distributed.barrier()
    proposals = {}
    for record in records:
        digest = _digest_or_none(record.path)
        boxes = cache.load(record.image_id, (record.width, record.height), digest) if digest else None
        if boxes is not None:
            proposals[record.image_id] = boxes
    return proposals
