"""Where caches live: one folder per dataset, shared by every run on that dataset."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_base() -> Path:
    """The folder of every cache of the project: ``$SPPNET_CACHE``, default ``~/.cache/sppnet``."""
    return Path(os.environ.get("SPPNET_CACHE", "~/.cache/sppnet")).expanduser()


def cache_root(root: str | Path) -> Path:
    """Cache folder of a dataset's images: ``$SPPNET_CACHE`` (default ``~/.cache/sppnet``) /
    ``<name>-<hash>``, keyed by the folder the images are in (a VOC dataset's ``JPEGImages``, a COCO
    dataset's image folder), so the same images in either format share their proposals and conv
    maps.  ``root``: a VOC folder or an image folder.  The hash of the resolved path keeps two
    folders with the same name apart; the name is the dataset's (``VOC2007`` for
    ``VOC2007/JPEGImages``)."""
    root = Path(root).expanduser()
    images = (root / "JPEGImages").resolve() if (root / "JPEGImages").is_dir() else root.resolve()
    digest = hashlib.sha1(str(images).encode()).hexdigest()[:8]
    name = images.parent.name if images.name == "JPEGImages" else images.name
    return cache_base() / f"{name}-{digest}"


def check_name(name: str, what: str) -> str:
    """``name`` when it can be used as one file-name part (a class name, an image id, a split);
    a ValueError naming ``what`` when it is empty, ``.``/``..``, or holds a path separator, a NUL or
    another control character (it would escape or split the folder it is written to)."""
    text = str(name)
    if (text in ("", ".", "..") or "/" in text or "\\" in text
            or any(ord(character) < 32 or ord(character) == 127 for character in text)):
        raise ValueError(f"{what} {text!r} cannot be part of a file name (a path separator, '..', or a "
                         "control character); rename it")
    return text
