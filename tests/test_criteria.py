"""Weight criteria and allocation on tiny graphs."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.criteria import weight_scores
from onnxprune.deps import analyze
from onnxprune.errors import InputError, UnsupportedModelError
from onnxprune.search import AllocationConfig, allocate
from tests import graphs


def test_l1_scores_follow_the_weights() -> None:
    from onnx import numpy_helper

    model = graphs.conv_bn_relu_conv()
    g = analyze(model).prunable()[0]
    # Scale one producer channel up: its unit must become the most important.
    w_name = analyze(model).graph.by_name[g.producers[0]].inputs[1]
    init = next(t for t in model.graph.initializer if t.name == w_name)
    w = numpy_helper.to_array(init).copy()
    w[2] *= 100.0
    init.CopyFrom(numpy_helper.from_array(w, w_name))
    analysis = analyze(model)
    g = analysis.prunable()[0]
    scores = weight_scores(analysis, "l1")
    assert int(np.argmax(scores[g.unit_slice])) == int(g.channel_units[2])
    for f in analysis.channel_groups:
        if not f.prunable:
            assert np.isinf(scores[f.unit_slice]).all()


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn", "random"])
def test_criteria_give_finite_scores_for_prunable_units(criterion: str) -> None:
    analysis = analyze(graphs.conv_bn_relu_conv())
    scores = weight_scores(analysis, criterion, seed=1)
    for g in analysis.prunable():
        assert np.isfinite(scores[g.unit_slice]).all()


def test_unknown_criterion() -> None:
    with pytest.raises(InputError):
        weight_scores(analyze(graphs.conv_bn_relu_conv()), "magic")


def test_uniform_sparsity_and_round_to() -> None:
    analysis = analyze(graphs.concat_channels())
    scores = weight_scores(analysis, "l1")
    keep = allocate(analysis, scores, AllocationConfig(sparsity=0.5))
    for g in analysis.prunable():
        kept = int(keep[g.unit_slice].sum())
        assert kept == int(np.ceil(0.5 * g.units))
    keep = allocate(analysis, scores, AllocationConfig(sparsity=0.5, round_to=4))
    for g in analysis.prunable():
        kept = int(keep[g.unit_slice].sum())
        assert kept >= 1 and (kept % 4 == 0 or g.units < 4 or kept == g.units)


@pytest.mark.parametrize("global_ranking", [False, True])
def test_target_flops_is_met(global_ranking: bool) -> None:
    analysis = analyze(graphs.se_block())
    scores = weight_scores(analysis, "l1")
    keep = allocate(analysis, scores, AllocationConfig(target_flops=0.6, global_ranking=global_ranking))
    assert analysis.cost.macs(keep) <= 0.6 * analysis.macs
    assert all(keep[g.unit_slice].any() for g in analysis.channel_groups)


def test_unreachable_target_is_an_error() -> None:
    analysis = analyze(graphs.conv_bn_relu_conv())
    with pytest.raises(UnsupportedModelError, match="out of reach"):
        allocate(analysis, weight_scores(analysis, "l1"), AllocationConfig(target_flops=1e-4))


def test_config_validation() -> None:
    with pytest.raises(InputError):
        AllocationConfig()
    with pytest.raises(InputError):
        AllocationConfig(sparsity=0.5, target_flops=0.5)
    with pytest.raises(InputError):
        AllocationConfig(target_flops=1.5)
