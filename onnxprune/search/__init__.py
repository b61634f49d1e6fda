"""Choosing which channels to keep: score-based allocation (uniform, global, MACs targets) and
the search methods (gat-ppo, rl-pruner, sacp) with their shared budget, evaluator and loop."""

from onnxprune.search.allocate import AllocationConfig, allocate, global_keep, uniform_keep
from onnxprune.search.base import (Checkpoint, SearchConfig, SearchContext, SearchResult,
                                   Trajectory, parse_options, progress_bar, search_fn)
from onnxprune.search.budget import (BUDGET_KINDS, Budget, BudgetMeter, fill_budget, make_feasible, mask_key,
                                     removal_order)
from onnxprune.search.evaluator import EvalConfig, Evaluator, LocalEvaluator, RayEvaluator, make_evaluator
from onnxprune.search.runner import run_search

__all__ = [
    "BUDGET_KINDS", "AllocationConfig", "Budget", "BudgetMeter", "Checkpoint", "EvalConfig",
    "Evaluator", "LocalEvaluator", "RayEvaluator", "make_evaluator", "SearchConfig", "SearchContext", "SearchResult", "Trajectory", "allocate", "fill_budget",
    "global_keep", "make_feasible", "mask_key", "parse_options", "progress_bar", "removal_order", "run_search", "search_fn",
    "uniform_keep",
]
