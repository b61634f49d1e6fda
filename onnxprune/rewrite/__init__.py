"""Applying masks to the ONNX graph (onnx-graphsurgeon) and verifying the result."""

from onnxprune.rewrite.apply import apply_keep
from onnxprune.rewrite.verify import VerifyResult, check_model, check_runs, masked_reference, random_inputs, verify

__all__ = ["VerifyResult", "apply_keep", "check_model", "check_runs", "masked_reference", "random_inputs", "verify"]
