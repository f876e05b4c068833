"""Checksums of saved states, and the one reader that refuses a file failing them.

``model.pt``, ``finetune.pt`` and ``classifiers.pt`` are ``torch.save``d dicts.  ``seal`` makes a
state plain (numpy arrays become tensors, numpy scalars Python numbers: ``plain_values``) and adds a
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
constructors in ``numpy_globals`` (which build an array or scalar from a dtype and raw bytes, and
nothing else) are allowed for them.  A file holding any other global is refused, naming the
global and ``tools/convert_model.py``, which converts a file of numpy data without asking and
any other global only when its user names it (``convert_file``).

Cost: hashing is memory speed (about 1 GB/s); the default trunk and head (~20 MB) take ~20 ms.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

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


def plain_values(value: Any) -> Any:
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
        items = {key: plain_values(item) for key, item in value.items()}
        return items if type(value) is dict else type(value)(items)
    if isinstance(value, (list, tuple)):
        return type(value)(plain_values(item) for item in value)
    return value


def tensors_as_arrays(state: Mapping[str, Any]) -> dict[str, Any]:
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


def refused_global(error: Exception) -> str | None:
    """The global or type a weights-only unpickling refused, from its error; None for another error."""
    import re

    found = re.search(r"GLOBAL ([\w.]+)|but got <class '([\w.]+)'>", str(error))
    return None if found is None else found.group(1) or found.group(2)


def read_state(path: Path) -> Any:
    """``torch.load`` of ``path`` that never runs code (module docstring); a file that needs any
    other global raises ``UnsafeStateError`` naming it."""
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals(numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        name = refused_global(error)
        if name is None:  # not a refused global or type: a corrupt pickle, for the caller to name
            raise
        raise UnsafeStateError(f"the global {name}") from None


def state_digest(state: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a state's values, its ``checksum`` entry left out."""
    digest = hashlib.sha256()
    _update(digest, {k: v for k, v in state.items() if k != CHECKSUM_KEY})
    return digest.hexdigest()


def seal(state: Mapping[str, Any]) -> dict[str, Any]:
    """A plain copy of ``state`` (``plain_values``) with its ``checksum`` entry."""
    state = plain_values(dict(state))
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


def numpy_data_globals() -> list:
    """What a converted file may need without being named by its user: ``numpy_globals`` and every
    numpy dtype class but ``object`` (strings, dates, bytes: data, never code)."""
    import numpy as np

    dtype_classes = [getattr(np.dtypes, name) for name in dir(np.dtypes)
                     if name.endswith("DType") and name != "ObjectDType"]
    return numpy_globals() + dtype_classes


def global_name(entry: Any) -> str:
    """The pickled name of a ``safe_globals`` entry (an object, or an ``(object, name)`` pair)."""
    return entry[1] if isinstance(entry, tuple) else f"{entry.__module__}.{entry.__qualname__}"


def convert_file(source: str | Path, target: str | Path, trusted: Sequence[str] = ()) -> list[str]:
    """Rewrite a state file of an earlier version (or any ``torch.save``d dict of tensors, arrays and
    plain values) as one ``read_state`` loads: plain, sealed again when it was sealed.

    Nothing in the file runs unless its user named it: the file's globals are listed first
    (``torch.serialization.get_unsafe_globals_in_checkpoint``), and a global outside numpy's data
    constructors (``numpy_data_globals``) that is not in ``trusted`` refuses the file, naming every
    such global, before anything is unpickled.  A file of numpy data is then read with
    ``weights_only=True`` and those constructors allowed; a file whose other globals its user named
    is read with ``weights_only=False`` (torch blocks some modules, ``posix`` among them, even when
    allowed), which can call only the globals just listed.  A sealed file must pass its checksum.  Returns the globals
    the source needed beyond tensors."""
    import pickle

    import torch

    from detector.core.io import save_checkpoint

    source, target = Path(source), Path(target)
    if source.resolve() == target.resolve():
        raise StateFileError(f"{target} is the file being converted; write the converted file elsewhere")
    if not source.is_file():
        raise StateFileError(f"{source} does not exist")
    data = {global_name(entry) for entry in numpy_data_globals()}
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(source)
    except Exception as error:  # not a torch file, truncated
        raise StateFileError(f"{source} is unreadable ({type(error).__name__}: {str(error)[:200]})") from error
    refused = [name for name in needed if name not in data and name not in trusted]
    if refused:
        flags = " ".join(f"--trust-global {name}" for name in refused)
        raise UnsafeStateError(f"{source} was not converted: loading it would call {', '.join(refused)}, "
                               f"which can run any code; if you made this file or trust its source, "
                               f"convert it with {flags}")
    trusted_needed = [name for name in needed if name not in data]
    try:
        if trusted_needed:  # every global is numpy data or named by the user: torch would block some
            state = torch.load(source, map_location="cpu", weights_only=False)  # (posix, say) even if allowed
        else:
            with torch.serialization.safe_globals(numpy_data_globals()):
                state = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # a type the listing does not show (torch checks them late)
        name = refused_global(error) or str(error)[:200]
        raise UnsafeStateError(f"{source} was not converted: it needs {name}; if you trust its source, "
                               f"convert it with --trust-global {name}") from None
    if not isinstance(state, dict):
        raise StateFileError(f"{source} is not a state file of this project (it holds a {type(state).__name__})")
    if CHECKSUM_KEY in state and state_digest(state) != state[CHECKSUM_KEY]:
        raise StateFileError(f"{source} fails its checksum (the file is corrupt); it was not converted")
    converted = seal(state) if CHECKSUM_KEY in state else plain_values(state)
    save_checkpoint(target, converted)
    read_state(target)  # what was written loads without running code
    return list(needed)
