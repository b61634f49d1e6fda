"""Top-1 accuracy and cross-entropy of an ONNX model through onnxruntime."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx

from onnxprune.errors import InputError
from onnxprune.numerics import session


@dataclass(frozen=True)
class Accuracy:
    top1: float
    loss: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return {"top1": self.top1, "loss": self.loss, "n": self.n}


def evaluate_onnx(model: str | os.PathLike[str] | onnx.ModelProto, x: np.ndarray, y: np.ndarray,
                  batch_size: int = 256) -> Accuracy:
    """Run `model` on `x` in batches (CPU provider) and score its first output against `y`."""
    try:
        sess = session(model, optimize=True)
    except Exception as exc:
        raise InputError(f"onnxruntime cannot load the model: {str(exc).splitlines()[0][:200]}") from None
    inp = sess.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    step = fixed or batch_size
    correct, loss_sum = 0, 0.0
    for start in range(0, len(x), step):
        xb = x[start:start + step]
        yb = y[start:start + step]
        if fixed and len(xb) != fixed:
            pad = np.zeros((fixed - len(xb),) + xb.shape[1:], dtype=xb.dtype)
            logits = sess.run(None, {inp.name: np.concatenate([xb, pad])})[0][: len(xb)]
        else:
            logits = sess.run(None, {inp.name: xb})[0]
        logits = logits.reshape(len(xb), -1).astype(np.float64)
        if logits.shape[1] <= int(yb.max()):
            raise InputError(f"the model has {logits.shape[1]} outputs but the data has label {int(yb.max())}")
        correct += int((logits.argmax(1) == yb).sum())
        shifted = logits - logits.max(1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
        loss_sum += float(-logp[np.arange(len(yb)), yb].sum())
    n = len(x)
    return Accuracy(top1=correct / max(n, 1), loss=loss_sum / max(n, 1), n=n)
