"""Channel importance scores (weight-based here; gradient-based `taylor` lives in torchcopy)."""

from onnxprune.criteria.weights import WEIGHT_CRITERIA, WeightCriterion, weight_scores

__all__ = ["WEIGHT_CRITERIA", "WeightCriterion", "weight_scores"]
