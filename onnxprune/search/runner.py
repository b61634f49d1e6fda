"""`run_search`: builds a method's context (importance scores, evaluator, budget meter), runs
the method, and releases the evaluator."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from onnxprune.deps import Analysis
from onnxprune.methods import L1, TAYLOR
from onnxprune.search.base import SearchConfig, SearchContext, SearchResult, search_fn
from onnxprune.search.budget import BudgetMeter
from onnxprune.search.evaluator import Evaluator, make_evaluator


def run_search(method: str, analysis: Analysis, copy: Any, splits: Any, cfg: SearchConfig,
               say: Callable[[str], None] | None = None, evaluator: Evaluator | None = None,
               materialize: Callable[[np.ndarray], Any] | None = None,
               latency: Callable[[np.ndarray], float] | None = None,
               score_model: Callable[[Any], float] | None = None) -> SearchResult:
    """Run search `method` on `analysis` with the torch copy `copy` and data `splits`.

    `copy` is masked in place during the search and restored afterwards (it stays usable as the
    teacher). `evaluator` replaces the one `cfg.eval` describes (`make_evaluator`: local or Ray).
    `materialize(keep)` (pruned ONNX of a mask), `latency(keep)` (seconds, for latency budgets)
    and `score_model(model)` (validation top-1 of an ONNX model) come from the API: search
    neither rewrites nor benchmarks models itself.
    """
    say = say or (lambda _msg: None)
    run = search_fn(method)
    say("scoring channels (L1, Taylor)")
    calib = {"images": cfg.eval.bn_batches * cfg.eval.bn_batch_size, "batch_size": cfg.eval.taylor_batch_size}
    scores = {L1.name: L1.load()(analysis, seed=cfg.seed),
              TAYLOR.name: TAYLOR.load()(analysis, seed=cfg.seed, copy=copy, splits=splits, **calib)}
    own = evaluator is None
    ev = evaluator if evaluator is not None else make_evaluator(analysis, copy, splits, cfg.eval)
    try:
        ctx = SearchContext(method, analysis, ev, BudgetMeter(analysis, cfg.budget, latency), scores, cfg, copy,
                            splits, say, materialize, score_model)
        say(f"searching ({method}, budget {cfg.budget.describe()})")
        return run(ctx)
    finally:
        if own:
            ev.close()
