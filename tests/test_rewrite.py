"""The rewrite of every tiny graph of `tests/graphs.py`, checked for exact equivalence.

For each graph and several random masks: the pruned model passes the checker, runs in
onnxruntime, equals the original with the same channels masked (rtol 1e-4, atol 1e-5), and its
MACs/params, analysed afresh, equal what the cost model predicted without rewriting.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxprune.deps import Analysis, analyze
from onnxprune.errors import UnsupportedModelError
from onnxprune.rewrite import apply_keep, verify
from tests import graphs

# Graphs onnxruntime cannot run (custom domain) or the analysis refuses on purpose.
NOT_RUNNABLE = {"unknown_op_custom", "no_conv"}


def random_keep(analysis: Analysis, rng: np.random.Generator) -> np.ndarray:
    keep = analysis.full_keep()
    for g in analysis.prunable():
        local = rng.random(g.units) < rng.uniform(0.3, 0.8)
        if g.units > 1:
            local[rng.integers(g.units)] = False  # remove at least one unit
        local[rng.choice(np.flatnonzero(~local) if local.all() else np.arange(g.units))] = True
        if not local.any():
            local[0] = True  # never prune a group to zero
        keep[g.unit_slice] = local
    return analysis.repair(keep)


CASES = sorted(set(graphs.all_builders()) - NOT_RUNNABLE)


@pytest.mark.parametrize("name", CASES)
def test_rewrite_is_exact(name: str) -> None:
    model = graphs.all_builders()[name]()
    analysis = analyze(model)
    rng = np.random.default_rng(0)
    if not analysis.prunable():
        # Frozen-only graphs: the identity mask must still round-trip.
        keep = analysis.full_keep()
        pruned = apply_keep(analysis, keep)
        verify(analysis, keep, pruned)
        return
    for trial in range(3):
        keep = random_keep(analysis, rng)
        assert not keep.all() or all(g.units == 1 for g in analysis.prunable())
        pruned = apply_keep(analysis, keep)
        result = verify(analysis, keep, pruned, seed=trial)
        assert result.max_abs_diff <= 1e-4
        again = analyze(pruned)
        assert again.macs == analysis.cost.macs(keep)
        assert again.params == analysis.cost.params(keep)
        normalized = analysis.graph.model.graph
        assert list(pruned.graph.input) == list(normalized.input)
        assert list(pruned.graph.output) == list(model.graph.output)


def test_pruned_input_model_is_untouched() -> None:
    model = graphs.concat_channels()
    before = model.SerializeToString()
    analysis = analyze(model)
    apply_keep(analysis, random_keep(analysis, np.random.default_rng(1)))
    assert model.SerializeToString() == before


def test_no_conv_is_refused() -> None:
    with pytest.raises(UnsupportedModelError, match="no Conv"):
        analyze(graphs.no_conv())


def test_wrong_mask_is_caught_by_verification() -> None:
    """Verification must be able to fail: corrupt one pruned weight and expect an error."""
    from onnx import numpy_helper

    from onnxprune.errors import VerificationError

    analysis = analyze(graphs.conv_bn_relu_conv())
    keep = random_keep(analysis, np.random.default_rng(2))
    pruned = apply_keep(analysis, keep)
    conv_w = next(t for t in pruned.graph.initializer if t.dims and len(t.dims) == 4)
    arr = numpy_helper.to_array(conv_w).copy()
    arr.flat[0] += 1.0
    conv_w.CopyFrom(numpy_helper.from_array(arr, conv_w.name))
    with pytest.raises(VerificationError, match="differs"):
        verify(analysis, keep, pruned)


def test_checker_rejects_broken_model() -> None:
    from onnxprune.errors import VerificationError
    from onnxprune.rewrite import check_model

    analysis = analyze(graphs.conv_bn_relu_conv())
    broken = onnx.ModelProto()
    broken.CopyFrom(analysis.graph.model)
    broken.graph.node[0].input[0] = "does_not_exist"
    with pytest.raises(VerificationError):
        check_model(broken)
