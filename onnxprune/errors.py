"""One error hierarchy for onnxprune.

`OnnxPruneError` and its subclasses are *expected* failures (bad input, unsupported model, a check
that did not hold): the CLI prints their message on one line and exits with code 2.
Anything else is a bug and exits with code 1.
"""


class OnnxPruneError(Exception):
    """Base class of every error onnxprune raises on purpose."""


class InputError(OnnxPruneError):
    """The input file or arguments are unusable (missing file, not ONNX, dynamic shape...)."""


class UnsupportedModelError(OnnxPruneError):
    """The model is valid ONNX but onnxprune cannot handle it (no Conv, unsupported op...)."""


class VerificationError(OnnxPruneError):
    """A pruned model failed its checker or numerical equivalence check."""


class DataError(OnnxPruneError):
    """A dataset could not be found or read."""
