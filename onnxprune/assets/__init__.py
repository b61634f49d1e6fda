"""Files shipped inside the package: the demo's trained models.

- `resnet20_fashion_mnist.onnx`: CIFAR-style ResNet-20 (`models.cifar.build("resnet20",
  in_channels=1, num_classes=10)`) trained on Fashion-MNIST, exported with BatchNorm folded into
  Conv (what `torch.onnx.export` gives users by default); input N x 1 x 28 x 28, pixels in [0, 1].
- `resnet20_digits.onnx`: the same network trained on scikit-learn's digits (N x 1 x 8 x 8), the
  demo's fallback when Fashion-MNIST is not installed.

Each has a JSON record next to it (same stem): training settings, test top-1, and the command
that reproduces it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ASSETS = Path(__file__).resolve().parent
DEMO_MODEL = ASSETS / "resnet20_fashion_mnist.onnx"
DIGITS_MODEL = ASSETS / "resnet20_digits.onnx"


def model_info(model: Path) -> dict[str, Any]:
    """The JSON record of a shipped model (training settings, test top-1, command)."""
    return dict(json.loads(model.with_suffix(".json").read_text()))
