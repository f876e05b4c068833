"""Convert a model file (or finetune.pt, classifiers.pt) of an earlier version to today's format.

    python tools/convert_model.py OLD/model.pt --out NEW/model.pt [--trust-global MODULE.NAME ...]

Every reader of the project loads state files with ``torch.load(weights_only=True)``: tensors,
containers and plain values only, so a file cannot run code when it is loaded.  Files of earlier
versions also hold numpy arrays; those convert without asking.  Before reading anything the tool
lists the file's globals: one beyond numpy's data constructors (``posix.system`` in a malicious
file) refuses the file, naming each such global, and nothing in it runs.  Only a global its user
names with ``--trust-global`` is allowed, and it is called while loading: give it only for a file
you made or whose source you trust.  The converted file holds tensors and plain values, sealed
again with its checksum (a sealed file must pass its old checksum first), and loads everywhere.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from detector.cli.base import HelpFormatter, tool_main


@tool_main("convert_model.py")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("source", type=Path, help="the state file to convert")
    parser.add_argument("--out", type=Path, required=True, help="converted file to write (not the source)")
    parser.add_argument("--trust-global", action="append", default=[], metavar="MODULE.NAME",
                        help="allow this global of the file (as the refusal names it) to be called while "
                             "loading; it can run any code: only for a file you trust (repeatable)")
    args = parser.parse_args(argv)

    from detector.core.integrity import convert_file

    needed = convert_file(args.source, args.out, args.trust_global)
    trusted = [name for name in needed if name in args.trust_global]
    print(f"wrote {args.out}" + (f" (it held {', '.join(needed)}; now tensors and plain values)" if needed
                                 else " (it held only tensors and plain values already)")
          + (f"; called the trusted {', '.join(trusted)} while loading" if trusted else ""))


if __name__ == "__main__":
    main()
