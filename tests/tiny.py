"""A small trained CNN on the digits dataset (8x8 images), for the search-method tests.

`ResNetTiny` has four prunable channel groups (stem 16, residual stream 32, residual branch 32,
head 64), trains in about a second, and is exported with BatchNorm kept (as models/train.py
does) or folded (`digits_model(folded=True)`, what users export). `digits_model()` is cached
per process.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import tempfile
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from onnxprune.data import Splits, load_dataset


class ResNetTiny(nn.Module):
    """(N, 1, 8, 8) -> stem 16 -> down 32 -> residual block 32 -> down 64 -> GAP -> Linear 10."""

    def __init__(self) -> None:
        super().__init__()

        def cbr(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.stem = cbr(1, 16)
        self.down1 = cbr(16, 32, 2)
        self.block = nn.Sequential(cbr(32, 32), nn.Conv2d(32, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32))
        self.down2 = cbr(32, 64, 2)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down1(self.stem(x))
        x = torch.relu(x + self.block(x))
        return self.fc(self.down2(x).mean(dim=(2, 3)))


def fit(net: nn.Module, splits: Splits, epochs: int) -> nn.Module:
    """`net` trained on the train split (Adam, lr 1e-2, batches of 64, seeded order), in eval mode."""
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, y = torch.from_numpy(splits.train[0]), torch.from_numpy(splits.train[1])
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(x), generator=gen).split(64):
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@functools.lru_cache(maxsize=2)
def digits_model(epochs: int = 10, folded: bool = False) -> tuple[Splits, onnx.ModelProto]:
    """(splits, trained ONNX model) on digits; deterministic (seeded, one torch thread).

    `folded`: exported as users do by default (TorchScript exporter in eval mode, BatchNorm
    folded into Conv) instead of with BatchNormalization kept; same weights either way."""
    splits = load_dataset("digits", input_shape=(1, 1, 8, 8), seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        net = fit(ResNetTiny(), splits, epochs)
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), \
                contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            path = Path(tmp) / "tiny.onnx"
            legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
            torch.onnx.export(net, (torch.zeros(1, 1, 8, 8),), str(path), **legacy, opset_version=17,
                              training=torch.onnx.TrainingMode.EVAL if folded else torch.onnx.TrainingMode.PRESERVE,
                              input_names=["input"],
                              output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
            model = onnx.load(str(path))
    finally:
        torch.set_num_threads(threads)
    return splits, model
