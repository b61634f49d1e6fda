"""One error hierarchy for onnxprune.

`OnnxPruneError` and its subclasses are *expected* failures. The CLI prints their message on one
line (the first line of it) and exits with the error's `exit_code`:

- 2 for a bad input or bad usage (`InputError`, `UnsupportedModelError`, `DataError`,
  `OutputError`): the user can fix it;
- 1 for `InternalFailure`: onnxprune's own work failed on a valid input (a fine-tune that
  diverged, a pruned model that fails verification); the input is not blamed, the message says
  it is onnxprune's fault.

Anything else is a bug and exits with code 1 too. `Interrupted` (SIGTERM, SIGHUP) is not an
error: the CLI removes its temporary files and exits with 128 + the signal number.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Iterator


class OnnxPruneError(Exception):
    """Base class of every error onnxprune raises on purpose."""

    #: the CLI's exit code for this error
    exit_code: int = 2


class InputError(OnnxPruneError):
    """The input file or arguments are unusable (missing file, not ONNX, dynamic shape...)."""


class UnsupportedModelError(OnnxPruneError):
    """The model is valid ONNX but onnxprune cannot handle it (no Conv, unsupported op...)."""


class DataError(OnnxPruneError):
    """A dataset could not be found or read."""


class OutputError(OnnxPruneError):
    """An output file could not be written (the path and the operating system's reason)."""


class InternalFailure(OnnxPruneError):
    """onnxprune's own work failed on a valid input; not the input's fault (exit code 1)."""

    exit_code = 1


#: the name issue 11 gave `InternalFailure` (kept for callers)
OwnFailure = InternalFailure


class VerificationError(InternalFailure):
    """A pruned model failed its checker or numerical equivalence check (our fault: exit 1)."""


class FinetuneDivergedError(InternalFailure):
    """Fine-tuning produced a non-finite loss, gradient or weight after every allowed restart."""


class Interrupted(BaseException):
    """SIGTERM or SIGHUP arrived (raised by the handler `onnxprune.fileio` installs)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


# -- naming settings in messages ---------------------------------------------------------------
# The same check serves the Python API and the command line. Messages name a setting through
# `option("target_flops")`: `target_flops` when called from Python, `--target-flops` when the CLI
# runs (it sets the style with `cli_style()`).

_CLI_STYLE: ContextVar[bool] = ContextVar("onnxprune_cli_style", default=False)
# Parameters whose command-line flag is not simply `--` + the name with dashes.
_CLI_FLAGS = {"global_ranking": "--global", "input_shapes": "--input-shape", "provider": "--provider",
              "batch_sizes": "--batch", "models": "MODEL.onnx", "model": "MODEL.onnx"}


def option(name: str, value: object = None) -> str:
    """How a message names the setting `name` (a Python parameter name): the parameter in Python,
    the flag on the command line. With `value`, `name=value` or `--flag value`."""
    if _CLI_STYLE.get():
        text = _CLI_FLAGS.get(name, "--" + name.replace("_", "-"))
        return text if value is None else f"{text} {value}"
    return name if value is None else f"{name}={value!r}"


@contextlib.contextmanager
def cli_style() -> Iterator[None]:
    """Inside this block, `option()` names command-line flags."""
    token = _CLI_STYLE.set(True)
    try:
        yield
    finally:
        _CLI_STYLE.reset(token)
