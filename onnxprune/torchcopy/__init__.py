"""The PyTorch copy of an ONNX model: onnx2torch round trip with onnxprune's extra converters,
initializer <-> parameter mapping, fast masked evaluation, Taylor scores, fine-tuning with
knowledge distillation, and weights written back into ONNX.

    >>> copy = to_torch(analysis)                  # checked against onnxruntime
    >>> masked = MaskedModel(copy, analysis)
    >>> masked.apply(keep); top1, loss = masked.evaluate(x, y)
"""

from onnxprune.torchcopy.convert import Binding, RoundTripCheck, TorchCopy, check_against_ort, to_torch
from onnxprune.torchcopy.converters import register as register_converters
from onnxprune.torchcopy.finetune import (FinetuneConfig, FinetuneResult, finetune, recalibrate_batchnorm,
                                          train_logits, verify_write_back, write_back)
from onnxprune.torchcopy.masked import MaskedModel
from onnxprune.torchcopy.taylor import taylor_scores

__all__ = [
    "Binding", "FinetuneConfig", "FinetuneResult", "MaskedModel", "RoundTripCheck", "TorchCopy",
    "check_against_ort", "finetune", "recalibrate_batchnorm", "register_converters", "taylor_scores", "to_torch",
    "train_logits", "verify_write_back", "write_back",
]
