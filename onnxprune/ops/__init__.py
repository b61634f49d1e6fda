"""Channel rules, one per ONNX op_type, in a registry (importing this package registers them)."""

from onnxprune.ops import elementwise, layout, linear, norm  # noqa: F401  (registration)
from onnxprune.ops.checks import check_layers
from onnxprune.ops.registry import (
    ChannelMap, Member, MemberKind, OpKind, Rule, RuleContext, kind_of, register, registered_ops, rule_for,
)

__all__ = ["ChannelMap", "Member", "MemberKind", "OpKind", "Rule", "RuleContext", "check_layers", "kind_of",
           "register", "registered_ops", "rule_for"]
