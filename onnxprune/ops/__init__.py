"""Channel rules, one per ONNX op_type, in a registry (importing this package registers them)."""

from onnxprune.ops import elementwise, layout, linear, norm  # noqa: F401  (registration)
from onnxprune.ops.checks import check_layers
from onnxprune.ops.registry import (
    ChannelMap, Member, MemberKind, Rule, RuleContext, register, registered_ops, rule_for,
)

__all__ = ["ChannelMap", "check_layers", "Member", "MemberKind", "Rule", "RuleContext", "register", "registered_ops", "rule_for"]
