"""Fixtures shared by the test files.

- `one_torch_thread` (module scope): one intra-op torch thread while a module runs; use it with
  `pytestmark = pytest.mark.usefixtures("one_torch_thread")`.
- `tiny` (module scope): `(splits, analysis)` of the small trained digits model (`tests.tiny`).
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest
import torch

from onnxprune.deps import Analysis, analyze
from tests.tiny import digits_model


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: on 2 shared cores, OpenMP threads of small convs stall each other
    (forward + backward of ResNet-20 is up to 10x slower with 2 threads on a busy machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Analysis]:
    """(splits, analysis) of the trained digits model (cached per process)."""
    splits, model = digits_model()
    return splits, analyze(model)
