"""torchvision zoo, exported both ways (TorchScript opset 17 and dynamo), random weights.

For every model and exporter:
- the analysis succeeds and its prunable groups match Torch-Pruning's `DependencyGraph` on the
  same torch model (final classifier excluded): same number of groups, same channel counts;
- `prune --method l1` at sparsity 0.3 and at target-flops 0.5 passes the checker, runs in
  onnxruntime and equals the masked original (verification inside `prune`); MACs within budget.

A few models are in the default suite; the rest carry the `zoo` marker (`bash scripts/dev.sh
test-zoo`). Exports are cached outside the repository (see tests/zoo.py).
"""

from __future__ import annotations

from collections import Counter

import pytest

from onnxprune.api import PruneConfig, prune
from onnxprune.deps import Analysis, analyze
from tests import zoo

FAST = ("resnet18", "mobilenet_v3_small", "squeezenet1_1", "mnasnet0_5", "shufflenet_v2_x0_5")
EXPORTERS = ("torchscript", "dynamo")


def _params() -> list:
    out = []
    for name in zoo.names():
        for exporter in EXPORTERS:
            marks = () if name in FAST else (pytest.mark.zoo,)
            out.append(pytest.param(name, exporter, marks=marks, id=f"{name}-{exporter}"))
    return out


def _weight_of(analysis: Analysis, producer: str) -> str:
    return analysis.graph.by_name[producer].inputs[1]


def _convnext_expectation(tp: list[int], analysis: Analysis) -> None:
    """ConvNeXt: LayerNorm normalizes over the channels of the residual stream, so removing a
    stream channel changes every other channel's output: onnxprune freezes the four stream
    groups (96/192/384/768) that Torch-Pruning prunes anyway (and thereby changes the function).
    The 18 block MLP hidden groups must match."""
    ours = sorted(g.channels for g in analysis.prunable())
    expected = Counter(tp) - Counter([96, 192, 384, 768])
    assert ours == sorted(expected.elements())
    frozen = [g for g in analysis.channel_groups if not g.prunable and g.reason and "LayerNormalization" in g.reason]
    assert {g.channels for g in frozen} == {96, 192, 384, 768}


def _shufflenet_expectation(analysis: Analysis, exporter: str) -> None:
    """ShuffleNet: Torch-Pruning fails on the channel shuffle (ZeroDivisionError in its reshape
    index mapping). Checked by hand instead: the hidden group of every branch2 (1x1 conv ->
    depthwise conv -> 1x1 conv) is independent of the shuffle and must be prunable; the
    shuffle/split passthrough ties channels across blocks and must not be pruned blindly."""
    # TorchScript keeps module paths in node names (it folds BN, renaming weights); dynamo
    # keeps them in weight names.
    def is_branch_first(node: str) -> bool:
        return "branch2/branch2.0/" in node or _weight_of(analysis, node).endswith("branch2.0.weight")

    convs = [n.name for n in analysis.graph.nodes if n.op_type == "Conv" and is_branch_first(n.name)]
    assert len(convs) == 16
    prunable = {p for g in analysis.prunable() for p in g.producers}
    for conv in convs:
        assert conv in prunable, f"{conv} should start a prunable group"


@pytest.mark.parametrize("name, exporter", _params())
def test_zoo_groups_match_torch_pruning(name: str, exporter: str) -> None:
    path = zoo.export(name, exporter)
    analysis = analyze(path)
    if name.startswith("shufflenet"):
        _shufflenet_expectation(analysis, exporter)
        return
    tp = zoo.tp_reference(name)
    if name.startswith("convnext"):
        _convnext_expectation(tp, analysis)
        return
    ours = sorted(g.channels for g in analysis.prunable())
    assert len(ours) == len(tp)
    assert ours == sorted(tp)


@pytest.mark.parametrize("name, exporter", _params())
def test_zoo_prunes_with_verified_equivalence(name: str, exporter: str) -> None:
    path = zoo.export(name, exporter)
    for kwargs in ({"sparsity": 0.3}, {"target_flops": 0.5}):
        result = prune(path, PruneConfig(method="l1", **kwargs))
        assert result.verified is not None and result.verified.max_abs_diff <= 1e-3
        before, after = result.macs
        assert after < before
        if "target_flops" in kwargs:
            assert after <= 0.5 * before
        again = analyze(result.model)
        assert again.macs == after


@pytest.mark.parametrize("name, exporter", _params())
def test_zoo_torch_copy_agrees_with_onnxruntime(name: str, exporter: str) -> None:
    """onnx2torch (with onnxprune's converters for what 1.5.15 lacks) reproduces onnxruntime."""
    import torch

    from onnxprune.torchcopy import to_torch

    analysis = analyze(zoo.export(name, exporter))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two torch threads stall each other on a busy 2-core machine
    try:
        copy = to_torch(analysis)  # raises UnsupportedModelError when the copy disagrees
    finally:
        torch.set_num_threads(threads)
    assert copy.check.max_abs_diff <= 1e-3 * max(1.0, copy.check.max_abs_output)


# Both exporters at several opsets (users pin 18 or 20; the main tests above use TorchScript at 17
# and dynamo at its default 20): the same model must give the same groups and prune with verified
# equivalence whatever the opset and exporter.
OPSET_MODELS = ("resnet18", "mobilenet_v3_small", "densenet121", "squeezenet1_1", "regnet_y_400mf")


@pytest.mark.zoo
@pytest.mark.parametrize("exporter, opset", zoo.OPSET_EXPORTS, ids=[f"{e}{o}" for e, o in zoo.OPSET_EXPORTS])
@pytest.mark.parametrize("name", OPSET_MODELS)
def test_zoo_opsets(name: str, exporter: str, opset: int) -> None:
    path = zoo.export_at_opset(name, exporter, opset)  # type: ignore[arg-type]
    analysis = analyze(path)
    assert analysis.graph.original_opset == opset
    reference = analyze(zoo.export(name, "torchscript"))  # opset 17
    assert sorted(g.channels for g in analysis.prunable()) == sorted(g.channels for g in reference.prunable())
    for kwargs in ({"sparsity": 0.3}, {"target_flops": 0.5}):
        result = prune(path, PruneConfig(method="l1", **kwargs))
        assert result.verified is not None
        before, after = result.macs
        assert after < before
        if "target_flops" in kwargs:
            assert after <= 0.5 * before
        assert analyze(result.model).macs == after


@pytest.mark.zoo
@pytest.mark.parametrize("opset", (18, 20))
def test_densenet121_default_init_dedup_constants(opset: int) -> None:
    """Issue 11: torchvision's default init, dynamo opset 18, `--target-flops 0.5` raised
    IndexError in the rewrite (BatchNormalizations reading one deduplicated initializer twice)."""
    path = zoo.export_at_opset("densenet121", "dynamo", opset, default_init=True)
    result = prune(path, PruneConfig(method="l1", target_flops=0.5))
    before, after = result.macs
    assert result.verified is not None and after <= 0.5 * before
    assert analyze(result.model).macs == after
