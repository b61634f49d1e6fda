"""Channel importance computed on the ONNX weights alone (the registry's criteria without data).

A group's importance aggregates every member: the producers' output slices and the consumers'
input slices (and, for `bn`, the BatchNormalization scales), each normalized by its own mean so
that no single layer dominates, then averaged per unit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onnxprune.deps import Analysis
from onnxprune.criteria.normalize import mean_normalized
from onnxprune.errors import InputError
from onnxprune.methods import METHODS, names_of
from onnxprune.ops import batchnorm_scale

WEIGHT_CRITERIA = names_of("criterion", needs_data=False)


def _position_norms(arr: np.ndarray, axis: int, p: int) -> np.ndarray:
    """L1 or L2 norm of each slice along `axis` (float64 accumulation, no float64 copy)."""
    others = tuple(a for a in range(arr.ndim) if a != axis)
    if p == 1:
        return np.abs(arr).sum(axis=others, dtype=np.float64)
    return np.sqrt(np.square(arr).sum(axis=others, dtype=np.float64))


def _accumulate(analysis: Analysis, kinds: tuple[str, ...], p: int,
                only_bn_scale: bool = False) -> tuple[np.ndarray, np.ndarray]:
    g = analysis.graph
    total = np.zeros(analysis.groups.num_units)
    count = np.zeros(analysis.groups.num_units)
    for rm in analysis.groups.members:
        m = rm.member
        if m.kind not in kinds or not m.tensor:
            continue
        if only_bn_scale and batchnorm_scale(g.by_name[m.node]) != m.tensor:
            continue
        arr = g.const(m.tensor)
        if arr is None or arr.ndim == 0:
            continue
        norms = mean_normalized(_position_norms(arr, m.axis, p))
        # A unit may cover several positions (Flatten -> Gemm): average them.
        per_unit = np.zeros(analysis.groups.num_units)
        hits = np.zeros(analysis.groups.num_units)
        np.add.at(per_unit, rm.units, norms)
        np.add.at(hits, rm.units, 1.0)
        touched = hits > 0
        total[touched] += per_unit[touched] / hits[touched]
        count[touched] += 1
    return total, count


def _frozen_inf(analysis: Analysis, scores: np.ndarray) -> np.ndarray:
    for grp in analysis.channel_groups:
        if not grp.prunable:
            scores[grp.unit_slice] = np.inf
    return scores


def _norm_scores(analysis: Analysis, p: int) -> np.ndarray:
    total, count = _accumulate(analysis, ("out", "in"), p)
    n = analysis.groups.num_units
    return np.divide(total, count, out=np.zeros(n), where=count > 0)


def l1_scores(analysis: Analysis, *, seed: int = 0, copy: Any = None, splits: Any = None) -> np.ndarray:
    """L1 norm of every member's weight slices (each normalized by its mean), averaged per unit."""
    return _frozen_inf(analysis, _norm_scores(analysis, 1))


def l2_scores(analysis: Analysis, *, seed: int = 0, copy: Any = None, splits: Any = None) -> np.ndarray:
    """As `l1_scores` with L2 norms."""
    return _frozen_inf(analysis, _norm_scores(analysis, 2))


def bn_scores(analysis: Analysis, *, seed: int = 0, copy: Any = None, splits: Any = None) -> np.ndarray:
    """BatchNormalization scales; groups without one (e.g. BN folded into Conv by the exporter)
    fall back to L1 of the weights."""
    n = analysis.groups.num_units
    total, count = _accumulate(analysis, ("out", "in"), 1)
    bn_total, bn_count = _accumulate(analysis, ("param",), 1, only_bn_scale=True)
    has_bn = np.zeros(n, dtype=bool)
    for grp in analysis.channel_groups:
        if (bn_count[grp.unit_slice] > 0).all():
            has_bn[grp.unit_slice] = True
    total = np.where(has_bn, bn_total, total)
    count = np.where(has_bn, bn_count, count)
    return _frozen_inf(analysis, np.divide(total, count, out=np.zeros(n), where=count > 0))


def random_scores(analysis: Analysis, *, seed: int = 0, copy: Any = None, splits: Any = None) -> np.ndarray:
    """Seeded uniform random scores (the random-mask baseline)."""
    return _frozen_inf(analysis, np.random.default_rng(seed).random(analysis.groups.num_units))


def weight_scores(analysis: Analysis, criterion: str, seed: int = 0) -> np.ndarray:
    """Importance of every unit by the weight criterion `criterion` (a registered criterion that
    needs no data); higher = more important; frozen units get +inf."""
    if criterion not in WEIGHT_CRITERIA:
        raise InputError(f"unknown criterion {criterion!r} (choose from {', '.join(WEIGHT_CRITERIA)})")
    return METHODS[criterion].load()(analysis, seed=seed)
