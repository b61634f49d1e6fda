"""Channel rules, one per ONNX op_type, in a registry (importing this package registers them), and
the op facts later stages ask for (`facts`): the only place that names op types."""

from onnxprune.ops import elementwise, layout, linear, norm  # noqa: F401  (registration)
from onnxprune.ops.checks import check_layers
from onnxprune.ops.facts import (
    LayerFacts, LayerKind, batchnorm_scale, has_params, is_affine, is_batchnorm, layer_facts, param_inputs,
)
from onnxprune.ops.registry import (
    ChannelMap, Member, MemberKind, OpKind, Rule, RuleContext, kind_of, register, registered_ops, rule_for,
)

__all__ = ["ChannelMap", "LayerFacts", "LayerKind", "Member", "MemberKind", "OpKind", "Rule", "RuleContext",
           "batchnorm_scale", "check_layers", "has_params", "is_affine", "is_batchnorm", "kind_of", "layer_facts",
           "param_inputs", "register", "registered_ops", "rule_for"]
