"""onnxsim before the analysis (`--simplify auto|on|off`).

Exporters leave shape computations in the graph (`Shape -> Gather -> Concat -> Reshape`, Slices
with computed bounds, Constant chains). The analysis cannot follow channels through a Reshape or
Slice whose target is computed, so it freezes those groups: a dynamic-batch ShuffleNetV2 export
has most of its groups frozen. onnxsim folds what is constant and leaves plain Reshapes and
Slices the rules understand.

Node names are kept: onnxsim keeps the names of the nodes it does not fold away, and the model
is normalized *before* simplification, so the names `--exclude` takes and reports show are the
ones `analyze` shows with or without it. Verification still compares the pruned model with the
user's original (normalized, not simplified) model, masked (`onnxprune.rewrite.verify`).
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass, replace

from onnxprune.errors import InputError, option
from onnxprune.ir.model import LoadedModel, normalize, with_ir_version

SIMPLIFY_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class SimplifyInfo:
    """What `--simplify` did: `applied` or not, and why not (`note`)."""

    mode: str
    applied: bool
    seconds: float = 0.0
    nodes_before: int = 0
    nodes_after: int = 0
    note: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"mode": self.mode, "applied": self.applied, "seconds": round(self.seconds, 3),
                "nodes_before": self.nodes_before, "nodes_after": self.nodes_after, "note": self.note}


def check_mode(mode: str) -> str:
    if mode not in SIMPLIFY_MODES:
        raise InputError(f"{option('simplify')} must be one of {', '.join(SIMPLIFY_MODES)}, got {mode!r}")
    return mode


def simplify(loaded: LoadedModel, mode: str = "auto") -> tuple[LoadedModel, SimplifyInfo]:
    """The simplified model (or `loaded` itself) and what happened.

    `auto`: simplify, and keep the model as given when onnxsim is missing or fails (the note
    says why); `on`: the same, but a failure is an `InputError`; `off`: do nothing.
    """
    check_mode(mode)
    before = len(loaded.model.graph.node)
    if mode == "off":
        return loaded, SimplifyInfo(mode, False, nodes_before=before, nodes_after=before, note="off")
    t0 = time.perf_counter()
    try:
        import onnxsim

        # onnxsim prints progress and warnings on stdout/stderr; the caller has its own output.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            model, ok = onnxsim.simplify(loaded.model)
        if not ok:
            raise RuntimeError("onnxsim's own check failed")
        normalize(model)
        with_ir_version(model)
    except Exception as exc:  # onnxsim raises RuntimeError, ValueError, onnx errors...
        text = " ".join(str(exc).split())[:200] or type(exc).__name__
        note = f"onnxsim failed ({type(exc).__name__}: {text})"
        if mode == "on":
            raise InputError(f"{note}; pass {option('simplify', 'off')} to analyse the model as given") from None
        return loaded, SimplifyInfo(mode, False, time.perf_counter() - t0, before, before, note + "; used the model as given")
    info = SimplifyInfo(mode, True, time.perf_counter() - t0, before, len(model.graph.node))
    return replace(loaded, model=model), info
