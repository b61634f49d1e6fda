"""`--simplify auto|on|off`: onnxsim before the analysis, node names kept, verification still
against the user's original model (masked)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxprune.api import PruneConfig, analyze_simplified, prune
from onnxprune.errors import InputError, VerificationError
from tests import graphs, zoo
from tests.test_zoo import EXPORTERS, FAST


def static_reshape_model() -> onnx.ModelProto:
    """`reshape_computed(64)` with a static batch of 1: the Reshape target is computed from
    `Shape`, which freezes the conv's group; onnxsim folds it to a constant.

    ```
    x (1,3,8,8) ─ conv0 3->4 ─ pool ─┬──────────────────────────────────── flat Reshape ─ fc 64->10 ─ y
                                     └─ shape ─ batch Gather ─ unsq ─ dims Concat [.., 64] ─┘
    ```
    """
    model = graphs.reshape_computed(64)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    return model


def test_simplify_unfreezes_computed_shapes() -> None:
    model = static_reshape_model()
    off, _, info_off = analyze_simplified(model, simplify="off")
    on, _, info_on = analyze_simplified(model, simplify="on")
    assert not info_off.applied and info_on.applied
    assert info_on.nodes_after < info_on.nodes_before
    conv_group = lambda a: next(g for g in a.channel_groups if "conv0" in g.producers)  # noqa: E731
    assert not conv_group(off).prunable and "Reshape" in (conv_group(off).reason or "")
    assert conv_group(on).prunable
    # names users pass to --exclude are the same with and without simplification
    assert {"conv0", "fc"} <= {n.name for n in on.graph.model.graph.node}
    excluded, _, _ = analyze_simplified(model, exclude=["conv0"], simplify="on")
    assert not conv_group(excluded).prunable


def test_auto_is_the_default_and_verifies_against_the_original() -> None:
    result = prune(static_reshape_model(), PruneConfig(sparsity=0.5))
    assert result.simplified is not None and result.simplified.applied and result.simplified.mode == "auto"
    assert result.verified is not None and result.verified.reference == "original"
    assert result.verified.max_abs_diff <= 1e-5
    report = result.report()
    assert report["simplify"]["applied"] and report["verify"]["reference"] == "original"


def test_excluding_a_folded_node_names_the_fix() -> None:
    with pytest.raises(InputError, match="simplify"):
        analyze_simplified(static_reshape_model(), exclude=["shape"], simplify="on")


def test_onnxsim_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxsim

    def broken(model: onnx.ModelProto, *args: object, **kwargs: object) -> tuple[onnx.ModelProto, bool]:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(onnxsim, "simplify", broken)
    analysis, _, info = analyze_simplified(graphs.conv_bn_relu_conv(), simplify="auto")
    assert not info.applied and info.note and "boom" in info.note and "\n" not in info.note
    assert analysis.prunable()
    with pytest.raises(InputError, match="simplify=.off."):
        analyze_simplified(graphs.conv_bn_relu_conv(), simplify="on")
    with pytest.raises(InputError, match="simplify"):
        analyze_simplified(graphs.conv_bn_relu_conv(), simplify="yes")


def test_a_wrong_simplification_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference is the user's model: a simplifier that changed a weight cannot pass."""
    import onnxsim

    real = onnxsim.simplify

    def wrong(model: onnx.ModelProto, *args: object, **kwargs: object) -> tuple[onnx.ModelProto, bool]:
        out, ok = real(model, *args, **kwargs)
        for t in out.graph.initializer:
            if t.name == "conv1.weight":
                arr = onnx.numpy_helper.to_array(t) * 1.5
                t.CopyFrom(onnx.numpy_helper.from_array(arr.astype(np.float32), t.name))
        return out, ok

    monkeypatch.setattr(onnxsim, "simplify", wrong)
    with pytest.raises(VerificationError, match="differs from the masked original"):
        prune(graphs.conv_bn_relu_conv(), PruneConfig(sparsity=0.5, simplify="on"))


def _zoo_params() -> list:
    out = []
    for name in FAST:
        for exporter in EXPORTERS:
            heavy = not (name == "shufflenet_v2_x0_5" and exporter == "dynamo")
            out.append(pytest.param(name, exporter, marks=(pytest.mark.zoo,) if heavy else (),
                                    id=f"{name}-{exporter}"))
    for name in zoo.names():
        if name not in FAST:
            for exporter in EXPORTERS:
                out.append(pytest.param(name, exporter, marks=(pytest.mark.zoo,), id=f"{name}-{exporter}"))
    return out


@pytest.mark.parametrize("name,exporter", _zoo_params())
def test_simplify_keeps_verification_exact_on_zoo(name: str, exporter: str) -> None:
    """Pruned from the simplified model, equal to the *original* export with the same channels
    masked; never fewer prunable channels than without simplification."""
    path = zoo.export(name, exporter)
    plain, _, _ = analyze_simplified(path, simplify="off")
    result = prune(path, PruneConfig(target_flops=0.5, simplify="on"))
    assert result.simplified is not None and result.simplified.applied
    assert result.verified is not None and result.verified.reference == "original"
    assert result.verified.max_abs_diff <= 1e-3
    m0, m1 = result.macs
    assert m1 <= 0.5 * m0
    prunable = lambda a: sum(g.channels for g in a.prunable())  # noqa: E731
    assert prunable(result.analysis) >= prunable(plain)
