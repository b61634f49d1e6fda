"""Seeded mutation fuzz of `onnxprune prune` (tests/fuzzkit.py): deleted nodes, rewired inputs,
wrong Conv weight shapes and attributes, duplicated node names, dropped initializers, changed
dtypes, truncated files, shared initializers and changed integer constants, over six models,
half of the mutants with `--no-verify`.

Every mutant must end in exit 0 with an output onnxruntime runs, or exit 2 with one line on
stderr: no exit 1, no traceback, no hang, no temporary file, the input unchanged.

The default suite runs a subset (40 mutants: every operator on four of the models, every model;
about 45 s on the shared 2-core machine under load); `pytest -m fuzz tests/test_fuzz.py` runs the full 320 mutants of another seed.
`python -m benchmarks.fuzz` runs the same and writes the counts to benchmarks/results/fuzz.json.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import fuzzkit

CI_MUTANTS = 40  # every operator 4 times, every model
FULL_MUTANTS = 320


def _check(outcomes: list[fuzzkit.Outcome]) -> None:
    failures = [f"#{o.mutant.index} {o.mutant.base}/{o.mutant.mutation}: {', '.join(o.problems())} "
                f"(rc {o.rc}, stderr {o.lines[:2]})" for o in outcomes if o.problems()]
    assert not failures, "\n".join(failures)
    exits = {o.rc for o in outcomes}
    assert exits <= {0, 2}
    assert 2 in exits  # the operators do break models


def test_fuzz_subset(tmp_path: Path) -> None:
    outcomes = fuzzkit.run_fuzz(seed=0, count=CI_MUTANTS, folder=tmp_path)
    assert {o.mutant.mutation for o in outcomes} == set(fuzzkit.MUTATIONS)
    assert {o.mutant.base for o in outcomes} == set(fuzzkit.base_models())
    _check(outcomes)


@pytest.mark.fuzz
def test_fuzz_full(tmp_path: Path) -> None:
    outcomes = fuzzkit.run_fuzz(seed=1, count=FULL_MUTANTS, folder=tmp_path)
    _check(outcomes)


def test_the_fuzz_can_fail(tmp_path: Path) -> None:
    """A CLI that crashes, leaves a temporary file or changes its input is reported."""
    mutant = next(fuzzkit.mutants(seed=0, count=1))
    outcome = fuzzkit.Outcome(mutant, rc=1, stderr="Traceback (most recent call last):\n  ...\n", seconds=0.0,
                              leftovers=[".out.onnx.1.deadbeef.tmp"], input_changed=True)
    assert set(outcome.problems()) >= {"exit 1", "traceback", "input changed"}
    assert fuzzkit.Outcome(mutant, rc=2, stderr="a\nb\n", seconds=0.0).problems() == ["2 lines on stderr"]
