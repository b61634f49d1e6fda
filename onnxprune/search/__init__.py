"""Search strategies that choose which channels to keep."""

from onnxprune.search.allocate import AllocationConfig, allocate, global_keep, uniform_keep

__all__ = ["AllocationConfig", "allocate", "global_keep", "uniform_keep"]
