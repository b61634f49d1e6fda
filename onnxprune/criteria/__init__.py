"""Channel importance scores (weight-based here; gradient-based `taylor` lives in torchcopy)."""

from onnxprune.criteria.normalize import mean_normalized
from onnxprune.criteria.weights import WEIGHT_CRITERIA, bn_scores, l1_scores, l2_scores, random_scores, weight_scores

__all__ = ["WEIGHT_CRITERIA", "bn_scores", "l1_scores", "l2_scores", "mean_normalized", "random_scores", "weight_scores"]
