"""Train a reference CNN on an offline dataset, report its test accuracy and export it to ONNX.

    python -m models.train --arch resnet20 --data fashion-mnist --epochs 10

The command line over `onnxprune.nets.train` (see there for the recipe).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from onnxprune.errors import OnnxPruneError
from onnxprune.nets.cifar import ARCHS
from onnxprune.nets.train import TrainResult, default_out_dir, evaluate, export_onnx, train

__all__ = ["TrainResult", "default_out_dir", "evaluate", "export_onnx", "main", "train"]


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (0 ok, 2 bad input)."""
    parser = argparse.ArgumentParser(prog="python -m models.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", required=True, choices=sorted(ARCHS))
    parser.add_argument("--data", default="fashion-mnist", help="data spec (default: fashion-mnist)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help=f"output folder (default: {default_out_dir()})")
    parser.add_argument("--name", default=None, help="file stem (default: ARCH_DATA)")
    parser.add_argument("--max-train-images", type=int, default=None)
    parser.add_argument("--input-size", type=int, default=None, help="resize to SIZE x SIZE")
    parser.add_argument("--in-channels", type=int, choices=(1, 3), default=None)
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--no-flip", action="store_true")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--fold-bn", action="store_true",
                        help="fold BatchNorm into Conv in ARCH_DATA.onnx too (default: keep BatchNormalization "
                             "there; ARCH_DATA-folded.onnx is always written)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        train(args.arch, args.data, args.epochs, batch_size=args.batch_size, lr=args.lr,
              weight_decay=args.weight_decay, seed=args.seed, out_dir=args.out, name=args.name,
              max_train_images=args.max_train_images, input_size=args.input_size,
              in_channels=args.in_channels, augment=not args.no_augment,
              flip=False if args.no_flip else None, device=args.device, fold_bn=args.fold_bn)
    except OnnxPruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
