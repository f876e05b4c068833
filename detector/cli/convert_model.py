"""Convert a model file (or finetune.pt, classifiers.pt) of an earlier version to today's format.

    python tools/convert_model.py OLD/model.pt --out NEW/model.pt

Every reader of the project loads state files with ``torch.load(weights_only=True)``: tensors,
containers and plain values only, so a file cannot run code when it is loaded.  A file that holds
other Python objects is refused, naming this tool.  Converting reads it with
``weights_only=False``, WHICH RUNS ANY CODE THE FILE CARRIES: run it only on a file you made or
whose source you trust.  The converted file holds tensors and plain values, sealed again with its
checksum (a sealed file must pass its old checksum first), and loads everywhere as usual.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from detector.cli.base import HelpFormatter, error_line
from detector.core.integrity import convert_trusted_file


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("source", type=Path, help="the state file to convert (one you trust)")
    parser.add_argument("--out", type=Path, required=True, help="converted file to write (not the source)")
    args = parser.parse_args(argv)
    print(f"convert_model.py: unpickling {args.source} without restrictions (it can run code: "
          "convert only files you trust)")
    try:
        needed = convert_trusted_file(args.source, args.out)
    except (ValueError, OSError) as error:
        raise SystemExit(f"convert_model.py: {error_line(error)}") from error
    print(f"wrote {args.out}" + (f" (it held {', '.join(needed)}; now tensors and plain values)" if needed
                                 else " (it held only tensors and plain values already)"))


if __name__ == "__main__":
    main()
