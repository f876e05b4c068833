"""Where caches live: one folder per dataset, shared by every run on that dataset."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_root(voc_root: str | Path) -> Path:
    """Cache folder of a dataset: ``$SPPNET_CACHE`` (default ``~/.cache/sppnet``) / ``<name>-<hash>``.

    The hash of the resolved dataset path keeps two datasets with the same folder name apart.
    """
    resolved = Path(voc_root).expanduser().resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:8]
    base = Path(os.environ.get("SPPNET_CACHE", "~/.cache/sppnet")).expanduser()
    return base / f"{resolved.name}-{digest}"
