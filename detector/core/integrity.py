"""Checksums of saved states, and the one reader that refuses a file failing them.

``model.pt``, ``finetune.pt`` and ``classifiers.pt`` are ``torch.save``d dicts.  ``seal`` adds a
``"checksum"`` entry: the SHA-256 of every value of the state in a canonical order (dict keys
sorted by their ``str``, lists in order, tensors and arrays as dtype, shape and raw bytes,
scalars and strings by ``repr``).  ``load_checked`` reads a file and recomputes it: a file that
torch cannot read (truncated, not a torch file, a flipped byte in its pickle or zip records), that
is not a dict of the expected kind, lacks the checksum or fails it is refused with a
``StateFileError`` naming the file and what to do.  A flipped byte in tensor data is not seen by
``torch.load`` (it does not check the zip CRCs): only the checksum finds it.

Cost: hashing is memory speed (about 1 GB/s); the default trunk and head (~20 MB) take ~20 ms.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Mapping

CHECKSUM_KEY = "checksum"


class StateFileError(ValueError):
    """A saved state file is missing, unreadable, of another kind or fails its checksum."""


def _update(digest: "hashlib._Hash", value: Any) -> None:
    """Feed ``value`` into ``digest`` in the canonical order of the module docstring."""
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    elif isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
        digest.update(f"A{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes() if array.dtype != object else repr(array.tolist()).encode())
    elif isinstance(value, Mapping):
        digest.update(f"D{len(value)}".encode())
        for key in sorted(value, key=str):
            digest.update(f"K{key!r}".encode())
            _update(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"L{len(value)}".encode())
        for item in value:
            _update(digest, item)
    else:
        digest.update(f"S{value!r}".encode())


def state_digest(state: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a state's values, its ``checksum`` entry left out."""
    digest = hashlib.sha256()
    _update(digest, {k: v for k, v in state.items() if k != CHECKSUM_KEY})
    return digest.hexdigest()


def seal(state: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``state`` with its ``checksum`` entry."""
    return {**state, CHECKSUM_KEY: state_digest(state)}


def load_checked(path: str | Path, what: str, remedy: str,
                 unsealed_ok: Callable[[dict], bool] | None = None) -> dict[str, Any]:
    """The sealed state in ``path``; ``what`` names the kind of file, ``remedy`` what to do when it
    is refused (e.g. "delete it and rerun tools/train_det.py"); ``unsealed_ok(state)`` True lets a
    file of an older format, written before checksums, through unchecked."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise StateFileError(f"{what} {path} does not exist; {remedy}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # truncated, not a torch file, corrupt: torch raises many kinds
        raise StateFileError(f"{what} {path} is unreadable ({type(error).__name__}: {str(error)[:200]}); "
                             f"{remedy}") from error
    if not isinstance(state, dict):
        raise StateFileError(f"{path} is not a {what} (it holds a {type(state).__name__}); {remedy}")
    if CHECKSUM_KEY not in state:
        if unsealed_ok is not None and unsealed_ok(state):
            return state
        raise StateFileError(f"{what} {path} has no checksum (written by an older version or another "
                             f"program); {remedy}")
    try:
        actual = state_digest(state)
    except Exception as error:  # a corrupt value that cannot even be hashed
        raise StateFileError(f"{what} {path} is corrupt ({error}); {remedy}") from error
    if actual != state[CHECKSUM_KEY]:
        raise StateFileError(f"{what} {path} fails its checksum (the file is corrupt); {remedy}")
    return state
