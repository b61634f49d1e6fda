"""One error hierarchy for onnxprune.

`OnnxPruneError` and its subclasses are *expected* failures (bad input, unsupported model, a check
that did not hold): the CLI prints their message on one line and exits with the error's
`exit_code`: 2 for the input's fault, 1 for `InternalFailure` (onnxprune's own work failed on a
valid input, e.g. a fine-tune that diverged). Anything else is a bug and exits with code 1.
"""


class OnnxPruneError(Exception):
    """Base class of every error onnxprune raises on purpose."""

    #: the CLI's exit code for this error
    exit_code: int = 2


class InputError(OnnxPruneError):
    """The input file or arguments are unusable (missing file, not ONNX, dynamic shape...)."""


class UnsupportedModelError(OnnxPruneError):
    """The model is valid ONNX but onnxprune cannot handle it (no Conv, unsupported op...)."""


class VerificationError(OnnxPruneError):
    """A pruned model failed its checker or numerical equivalence check."""


class DataError(OnnxPruneError):
    """A dataset could not be found or read."""


class InternalFailure(OnnxPruneError):
    """onnxprune's own work failed on a valid input; not the input's fault (exit code 1)."""

    exit_code = 1


class FinetuneDivergedError(InternalFailure):
    """Fine-tuning produced a non-finite loss, gradient or weight after every allowed restart."""
