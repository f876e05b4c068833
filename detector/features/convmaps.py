"""Conv maps computed once per image per scale (and per flip), cached on disk as float16.

The whole point of SPP-net: the trunk runs once per image per scale, never per window.
Every later stage (fine-tuning, SVMs, box regression, test) reads the maps from this cache.

File format (``CACHE_VERSION`` 2, in the folder name): one ``.npz`` per (image, scale, flip)
holding ``features`` (float16 C x h x w), ``factor`` (the image resize factor), ``image_size``
(width, height of the decoded image), ``image_digest`` (``detector.core.images.image_digest``, the
SHA-256 of the image file's bytes) and ``crc32`` of the feature bytes.  Files are written
atomically and verified when read: a file that fails to load, has the wrong shape or checksum,
or was made from other image bytes (an image replaced or edited under the same id) is logged and
recomputed, never used.  Version 1 files (no digest) sit in another folder and are never read.
Two runs sharing the cache take a lock per item (``detector.core.locks``): the second waits for
the first's map and reads it rather than computing it again.  An image whose map cannot be made (decode or trunk error) is logged naming the file and listed
in ``precompute``'s ``failed_ids``, so training leaves it out.

Several processes under ``torchrun`` (``detector.core.distributed``): ``precompute`` has each rank
compute the maps of its shard of the images into the shared cache, waits for every rank, and
returns the counts of all ranks (the same ``failed_ids`` on every rank, so every rank leaves out
the same images).  The cache folder must be one all ranks see (a shared file system across
machines).
"""
from __future__ import annotations

import hashlib
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence
from urllib.parse import quote

import numpy as np
import torch
from tqdm import tqdm

from detector.core import distributed
from detector.core.images import image_digest, load_image
from detector.core.io import save_atomic
from detector.core.locks import item_lock
from detector.core.records import ImageRecord
from detector.core.runtime import releasing_freed_memory
from detector.core.timing import StageTimer
from detector.features.backbones import Backbone, input_memory_format
from detector.features.geometry import image_scale_factor

log = logging.getLogger(__name__)

CACHE_VERSION = 2


@dataclass
class ConvMap:
    """A conv map of one image at one scale: C x h x w features, the resize factor, and the size
    (width, height) and content digest of the image it was made from (empty when unknown)."""

    features: np.ndarray
    factor: float
    image_size: tuple[int, int] = (0, 0)
    image_digest: str = ""


def backbone_fingerprint(backbone: Backbone) -> str:
    """Short hash of the trunk's layers (strides, dilations, paddings) and weights, so maps of
    different trunks never mix (a dilated trunk has the plain one's weights)."""
    digest = hashlib.sha1(backbone.name.encode())
    digest.update(repr(backbone.trunk).encode())
    for name, tensor in backbone.trunk.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:10]


class ConvMapCache:
    """Folder of verified float16 conv maps, one file per (image id, scale, flip)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path(self, image_id: str, scale: int, flip: bool) -> Path:
        name = quote(image_id, safe="") + ".npz"
        return self.folder / f"s{scale}{'-flip' if flip else ''}" / name

    def load(self, image_id: str, scale: int, flip: bool, digest: str | None = None) -> ConvMap | None:
        """The cached map, or None when it is absent, broken or (``digest`` given) made from other
        image bytes; a broken or stale file is logged."""
        path = self.path(image_id, scale, flip)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                features = data["features"]
                factor = float(data["factor"])
                crc = int(data["crc32"])
                size = tuple(int(v) for v in data["image_size"])
                stored_digest = str(data["image_digest"])
            if features.dtype != np.float16 or features.ndim != 3 or min(features.shape) < 1:
                raise ValueError(f"bad array {features.dtype} {features.shape}")
            if zlib.crc32(features.tobytes()) != crc:
                raise ValueError("checksum mismatch")
        except Exception as error:  # any unreadable file is recomputed, never used
            log.warning("conv map cache: %s is broken (%s); it will be recomputed", path, error)
            return None
        if digest is not None and stored_digest != digest:
            log.warning("conv map cache: %s was made from other bytes of image %s (replaced or edited); "
                        "it will be recomputed", path, image_id)
            return None
        return ConvMap(features, factor, size, stored_digest)

    def save(self, image_id: str, scale: int, flip: bool, conv_map: ConvMap) -> int:
        """Write atomically; returns the file size in bytes."""
        path = self.path(image_id, scale, flip)
        path.parent.mkdir(parents=True, exist_ok=True)
        features = np.ascontiguousarray(conv_map.features, dtype=np.float16)
        save_atomic(path, lambda handle: np.savez(handle, features=features,
                                                  factor=np.float64(conv_map.factor),
                                                  image_size=np.array(conv_map.image_size, np.int64),
                                                  image_digest=np.str_(conv_map.image_digest),
                                                  crc32=np.int64(zlib.crc32(features.tobytes()))))
        return path.stat().st_size


def compute_conv_map(backbone: Backbone, image: np.ndarray, scale: int, flip: bool,
                     max_side: int, device: str = "cpu", digest: str = "") -> ConvMap:
    """Run the trunk once on the image resized so its short side is ``scale``.

    The batch's layout is ``input_memory_format(device)``; the map is stored C x h x w.
    """
    height, width = image.shape[:2]
    factor = image_scale_factor(height, width, scale, max_side)
    batch = backbone.prepare(image, factor, flip=flip).to(device)
    with torch.inference_mode():
        features = backbone(batch.contiguous(memory_format=input_memory_format(device)))[0]
    return ConvMap(features.to("cpu", torch.float16).contiguous().numpy(), factor, (width, height), digest)


class ConvMapProvider:
    """Loads maps from the cache, computing (and caching) any that are missing or broken."""

    def __init__(self, backbone: Backbone, cache: ConvMapCache | None, max_side: int, device: str = "cpu"):
        """``cache`` None: maps are computed on every call and kept nowhere (a single image, a
        user's photo: nothing of a dataset's cache is touched)."""
        self.backbone = backbone
        self.cache = cache
        self.max_side = max_side
        self.device = device

    def get(self, record: ImageRecord, scale: int, flip: bool,
            image: np.ndarray | None = None) -> ConvMap:
        """The map of one image at one scale, from the cache when made from these image bytes."""
        conv_map = self._cached(record, scale, flip)
        if conv_map is not None:
            return conv_map
        if self.cache is None:
            image = load_image(record.path) if image is None else image
            return compute_conv_map(self.backbone, image, scale, flip, self.max_side, self.device)
        with item_lock(self.cache.path(record.image_id, scale, flip)):
            conv_map = self._cached(record, scale, flip)  # another run may have made it meanwhile
            if conv_map is None:
                image = load_image(record.path) if image is None else image
                conv_map = compute_conv_map(self.backbone, image, scale, flip, self.max_side, self.device,
                                            image_digest(record.path))
                self.cache.save(record.image_id, scale, flip, conv_map)
        return conv_map

    def _cached(self, record: ImageRecord, scale: int, flip: bool) -> ConvMap | None:
        """The cached map made from the record's current image bytes, or None."""
        if self.cache is None:
            return None
        return self.cache.load(record.image_id, scale, flip, image_digest(record.path))

    def get_scales(self, record: ImageRecord, scales: Sequence[int], flip: bool,
                   image: np.ndarray | None = None, timer: StageTimer | None = None) -> list[ConvMap]:
        """Maps of one image at every scale, decoding the image at most once (``image``: its
        RGB pixels when already in memory); ``timer``: seconds per scale added to its stages
        ``"conv SCALE"`` (the image's decoding counted in the first scale that needs it)."""
        timer = timer or StageTimer()
        maps: list[ConvMap | None] = []
        for scale in scales:
            with timer.stage(f"conv {scale}"):
                conv_map = self._cached(record, scale, flip)
                if conv_map is None:
                    image = load_image(record.path) if image is None else image
                    conv_map = self.get(record, scale, flip, image)
            maps.append(conv_map)
        return maps  # type: ignore[return-value]

    def precompute(self, records: Iterable[ImageRecord], scales: Sequence[int],
                   flips: Sequence[bool] = (False,), progress: bool = True,
                   desc: str = "conv maps") -> dict[str, float]:
        """Fill the cache for every record/scale/flip; returns counts and bytes per image.

        An image that cannot be read is logged (naming the file) and skipped.  Under ``torchrun``
        each rank computes its shard and the counts are those of all ranks (module docstring).
        """
        if self.cache is None:
            raise ValueError("precompute needs a conv-map cache folder")
        records = list(records)
        computed = 0
        failed_ids: list[str] = []
        total_bytes = 0
        mine = distributed.shard(records)
        bar = tqdm(mine, desc=desc, disable=not progress or not distributed.is_main(), unit="img")
        for record in releasing_freed_memory(bar):
            try:
                digest = image_digest(record.path)
                missing = [(s, f) for f in flips for s in scales
                           if self.cache.load(record.image_id, s, f, digest) is None]
                if missing:
                    with item_lock(self.cache.path(record.image_id, scales[0], flips[0])):  # one per image
                        missing = [(s, f) for s, f in missing  # another run may have made them meanwhile
                                   if self.cache.load(record.image_id, s, f, digest) is None]
                        image = load_image(record.path) if missing else None
                        for scale, flip in missing:
                            conv_map = compute_conv_map(self.backbone, image, scale, flip,
                                                        self.max_side, self.device, digest)
                            self.cache.save(record.image_id, scale, flip, conv_map)
                    computed += bool(missing)
            except OSError:
                raise  # a cache folder that cannot be written stops the run (the message names it)
            except Exception as error:  # decode or trunk failure: this image only
                log.error("conv maps: skipping image %s (%s): %s", record.image_id, record.path, error)
                failed_ids.append(record.image_id)
                continue
            total_bytes += sum(self.cache.path(record.image_id, s, f).stat().st_size
                               for f in flips for s in scales
                               if self.cache.path(record.image_id, s, f).exists())
        if distributed.world_size() > 1:  # the all-gather also waits for every rank's shard
            parts = distributed.all_gather_objects((computed, failed_ids, total_bytes))
            computed = sum(part[0] for part in parts)
            failed_set = {i for part in parts for i in part[1]}
            failed_ids = [r.image_id for r in records if r.image_id in failed_set]  # the records' order
            total_bytes = sum(part[2] for part in parts)
        done = max(len(records) - len(failed_ids), 1)
        return {"images": len(records), "computed": computed, "failed": len(failed_ids),
                "failed_ids": failed_ids, "bytes_per_image": total_bytes / done}
