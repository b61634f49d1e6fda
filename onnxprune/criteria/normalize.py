"""Score normalization shared by every criterion and every ranking across groups."""

from __future__ import annotations

import numpy as np


def mean_normalized(values: np.ndarray) -> np.ndarray:
    """`values` (as float64) divided by the mean of its finite entries, so that no layer or group
    dominates a comparison across them; unchanged when that mean is not positive (or absent)."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    mean = float(finite.mean()) if finite.size else 0.0
    return v / mean if mean > 0 else v
