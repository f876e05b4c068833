"""Compress a trained detector's fc6 with a truncated SVD (Fast R-CNN, section 3.1).

    python tools/compress_net.py --model DIR/model.pt --rank 256 --out DIR/model_svd256.pt

The compressed model is a model file like any other (test_det.py, benchmark.py, ensemble.py);
fc6 becomes two layers of rank R, which cuts its multiply-adds by D*W / (R*(D+W)).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from detector.cli.base import HelpFormatter, tool_main


@tool_main("compress_net.py")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="model.pt written by tools/train_det.py")
    parser.add_argument("--rank", type=int, required=True, help="rank of the compressed fc6, e.g. 256")
    parser.add_argument("--out", type=Path, required=True, help="compressed model file to write")
    args = parser.parse_args(argv)
    from detector.model.compression import compress_model
    from detector.model.detector import load_model, save_model

    model, factors = compress_model(load_model(args.model), args.rank)
    save_model(args.out, model)
    width, inputs = factors.second.shape[0], factors.first.shape[1]
    print(f"fc6 {width} x {inputs} -> rank {args.rank}: "
          f"{width * inputs / (args.rank * (width + inputs)):.1f}x fewer multiply-adds, "
          f"{100 * factors.kept_energy:.1f}% of the squared singular values kept "
          f"(relative Frobenius error {factors.relative_error:.3f})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
