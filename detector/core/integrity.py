"""Checksums of saved states, and the one reader that refuses a file failing them.

``model.pt``, ``finetune.pt`` and ``classifiers.pt`` are ``torch.save``d dicts.  ``seal`` makes a
state plain (numpy arrays become tensors, numpy scalars Python numbers: ``plain``) and adds a
``"checksum"`` entry: the SHA-256 of every value of the state in a canonical order (dict keys
sorted by their ``str``, lists in order, tensors and arrays as dtype, shape and raw bytes,
scalars and strings by ``repr``).  ``load_checked`` reads a file and recomputes it: a file that
torch cannot read (truncated, not a torch file, a flipped byte in its pickle or zip records), that
is not a dict of the expected kind, lacks the checksum or fails it is refused with a
``StateFileError`` naming the file and what to do.  A flipped byte in tensor data is not seen by
``torch.load`` (it does not check the zip CRCs): only the checksum finds it.

Loading never runs code from the file: ``read_state`` unpickles with ``torch.load(...,
weights_only=True)``, which builds only tensors, containers and plain values and refuses any other
global *before* calling it (a ``__reduce__`` payload is never executed).  Files of this version
hold nothing else.  Files of earlier versions also hold numpy arrays and scalars: the numpy
constructors in ``NUMPY_GLOBALS`` (which build an array or scalar from a dtype and raw bytes, and
nothing else) are allowed for them.  A file holding any other global is refused, naming the
global and ``tools/convert_model.py``, which a user runs knowingly on a file they trust.

Cost: hashing is memory speed (about 1 GB/s); the default trunk and head (~20 MB) take ~20 ms.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Mapping

CHECKSUM_KEY = "checksum"
CONVERT = "tools/convert_model.py"  # the one tool that reads an untrusted-format file, on request


class StateFileError(ValueError):
    """A saved state file is missing, unreadable, of another kind or fails its checksum."""


class UnsafeStateError(StateFileError):
    """A state file that holds Python objects beyond tensors, containers and plain values."""


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


def plain(value: Any) -> Any:
    """``value`` with every numpy array as a tensor and every numpy scalar as a Python number, so
    that ``torch.load(weights_only=True)`` reads it back with no allow-listed global; containers
    keep their type."""
    import numpy as np
    import torch

    if isinstance(value, np.ndarray):
        if value.dtype.kind in "biuf" and value.dtype.itemsize <= 8 and value.dtype != np.uint16:
            return torch.from_numpy(np.array(value, order="C"))  # a copy; 0-d stays 0-d
        return value.tolist()  # strings, objects: plain lists
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):  # dict, OrderedDict, Counter (a scheduler's milestones)
        items = {key: plain(item) for key, item in value.items()}
        return items if type(value) is dict else type(value)(items)
    if isinstance(value, (list, tuple)):
        return type(value)(plain(item) for item in value)
    return value


def arrays(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` (a part's ``state_dict`` as read back) with its tensors as numpy arrays."""
    import torch

    return {key: value.numpy() if isinstance(value, torch.Tensor) else value for key, value in state.items()}


def numpy_globals() -> list:
    """The numpy constructors an earlier version's state file needs (module docstring), under the
    names numpy 1 and numpy 2 pickle them with."""
    import numpy as np

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    found: list = [np.ndarray, np.dtype]
    for name in ("_reconstruct", "scalar"):
        function = getattr(multiarray, name)
        found += [function, (function, f"numpy.core.multiarray.{name}"),
                  (function, f"numpy._core.multiarray.{name}")]
    dtype_classes = {type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFD"}
    found += sorted(dtype_classes, key=lambda cls: cls.__name__)
    return found


def read_state(path: Path) -> Any:
    """``torch.load`` of ``path`` that never runs code (module docstring); a file that needs any
    other global raises ``UnsafeStateError`` naming it."""
    import pickle
    import re

    import torch

    try:
        with torch.serialization.safe_globals(numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)|but got <class '([\w.]+)'>", str(error))
        if found is None:  # not a refused global or type: a corrupt pickle, for the caller to name
            raise
        raise UnsafeStateError(f"the global {found.group(1) or found.group(2)}") from None


def state_digest(state: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a state's values, its ``checksum`` entry left out."""
    digest = hashlib.sha256()
    _update(digest, {k: v for k, v in state.items() if k != CHECKSUM_KEY})
    return digest.hexdigest()


def seal(state: Mapping[str, Any]) -> dict[str, Any]:
    """A plain copy of ``state`` (``plain``) with its ``checksum`` entry."""
    state = plain(dict(state))
    return {**state, CHECKSUM_KEY: state_digest(state)}


def load_checked(path: str | Path, what: str, remedy: str,
                 unsealed_ok: Callable[[dict], bool] | None = None) -> dict[str, Any]:
    """The sealed state in ``path``, read without running code (``read_state``); ``what`` names
    the kind of file, ``remedy`` what to do when it is refused (e.g. "delete it and rerun
    tools/train_det.py"); ``unsealed_ok(state)`` True lets a file of an older format, written
    before checksums, through unchecked."""
    path = Path(path)
    if not path.is_file():
        raise StateFileError(f"{what} {path} does not exist; {remedy}")
    try:
        state = read_state(path)
    except UnsafeStateError as error:
        raise UnsafeStateError(
            f"{what} {path} holds Python objects that loading would run ({error}), so it was not "
            f"loaded; if it is a {what} of an earlier version from a source you trust, convert it "
            f"with: python {CONVERT} {path} --out NEW.pt; otherwise {remedy}") from None
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


def convert_trusted_file(source: str | Path, target: str | Path) -> list[str]:
    """Rewrite a state file of an earlier version (or any ``torch.save``d dict of tensors, arrays and
    plain values) as one ``read_state`` loads: plain, sealed again when it was sealed.  This is the
    one place the project unpickles with ``weights_only=False``, which can run code in the file:
    only ``tools/convert_model.py`` calls it, on a file its user names and trusts.  A sealed file
    must pass its checksum first.  Returns the globals the source needed beyond tensors."""
    import torch

    from detector.core.io import save_checkpoint

    source, target = Path(source), Path(target)
    if source.resolve() == target.resolve():
        raise StateFileError(f"{target} is the file being converted; write the converted file elsewhere")
    if not source.is_file():
        raise StateFileError(f"{source} does not exist")
    needed = torch.serialization.get_unsafe_globals_in_checkpoint(source)
    state = torch.load(source, map_location="cpu", weights_only=False)  # the user trusts this file
    if not isinstance(state, dict):
        raise StateFileError(f"{source} is not a state file of this project (it holds a {type(state).__name__})")
    if CHECKSUM_KEY in state and state_digest(state) != state[CHECKSUM_KEY]:
        raise StateFileError(f"{source} fails its checksum (the file is corrupt); it was not converted")
    converted = seal(state) if CHECKSUM_KEY in state else plain(state)
    save_checkpoint(target, converted)
    read_state(target)  # what was written loads without running code
    return list(needed)
