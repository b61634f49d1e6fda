"""The one registry of pruning methods: every criterion and search method is named here once.

The API's checks, the CLI's choices, flags and help, and the benchmark list all derive from
`METHODS`; the implementation is imported only when the method runs (`Method.load()`).

Two kinds:

- `criterion`: a function `scores(analysis, *, seed, copy=None, splits=None) -> np.ndarray`
  (importance per unit, frozen units +inf); the API allocates keep masks from it.
- `search`: a function `run(ctx: SearchContext) -> SearchResult` (`onnxprune.search.base`).

Adding a method: one module with that function, one `Method(...)` line below, one test.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Literal

from onnxprune.errors import InputError

Kind = Literal["criterion", "search"]


@dataclass(frozen=True)
class Flag:
    """A named command-line flag of a search method (`--NAME`, value into the method's options).

    `const`: the flag takes no value and stores `const` (e.g. `--no-pretrain` stores False).
    """

    name: str  # option key (underscores); the flag is `--` + name with dashes
    kind: type
    help: str
    const: Any = None


@dataclass(frozen=True)
class Method:
    """A pruning method: its name (`--method NAME`), kind, whether it needs `--data`, a one-line
    summary for `--help`, where it is implemented (`module:function`) and its named flags."""

    name: str
    kind: Kind
    entry: str
    summary: str
    needs_data: bool = False
    flags: tuple[Flag, ...] = ()

    @property
    def searches(self) -> bool:
        return self.kind == "search"

    def load(self) -> Callable[..., Any]:
        """The implementing function (imported now)."""
        module, _, name = self.entry.partition(":")
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                raise InputError(f"--method {self.name} is not available in this version") from None
            raise
        return getattr(mod, name)


_PRESET = Flag("preset", str, "cpu (default) | paper")

L1 = Method("l1", "criterion", "onnxprune.criteria.weights:l1_scores", "L1 norm of the weights")
L2 = Method("l2", "criterion", "onnxprune.criteria.weights:l2_scores", "L2 norm of the weights")
BN = Method("bn", "criterion", "onnxprune.criteria.weights:bn_scores",
            "BatchNormalization scales (L1 where BN is folded)")
TAYLOR = Method("taylor", "criterion", "onnxprune.torchcopy.taylor:taylor_criterion",
                "first-order Taylor (gradient x activation) on data", needs_data=True)
RANDOM = Method("random", "criterion", "onnxprune.criteria.weights:random_scores", "random (seeded) baseline")
GAT_PPO = Method("gat-ppo", "search", "onnxprune.search.gat_ppo:run",
                 "graph-attention policy trained with PPO under the budget", needs_data=True, flags=(
                     Flag("episodes", int, "candidates sampled and evaluated"),
                     Flag("steps", int, "decision steps per episode (0: one group per step; 1: one shot)"),
                     Flag("learner", str, "ppo | prior | random | cem (the last three: controls)"),
                     Flag("policy", str, "start from this pre-trained policy file (.npz)"),
                     Flag("block", int, "channels per keep/drop block (--option action=blocks)"),
                     Flag("blocks_per_group", int, "blocks per group (instead of --block)"),
                     Flag("gat_backend", str, "auto | dgl | torch (auto: DGL where it imports)"),
                     Flag("pretrain", bool, "skip the graph auto-encoder pre-training (ablation)", const=False),
                 ))
RL_PRUNER = Method("rl-pruner", "search", "onnxprune.search.rl_pruner:run",
                   "Monte Carlo sampling + Q-learning over layer sparsity", needs_data=True, flags=(
                       Flag("episodes", int, "sampling stages per step"),
                       Flag("steps", int, "pruning steps"),
                       Flag("reward", str, "accuracy | flops | params (the paper's reward presets)"),
                       _PRESET,
                   ))
SACP = Method("sacp", "search", "onnxprune.search.sacp:run",
              "contrastive graph embeddings rank pruning configurations", needs_data=True, flags=(_PRESET,))

METHODS: dict[str, Method] = {m.name: m for m in (L1, L2, BN, TAYLOR, RANDOM, GAT_PPO, RL_PRUNER, SACP)}


def method(name: str, kind: Kind | None = None) -> Method:
    """The registered method `name` (of `kind` when given); a one-line `InputError` otherwise."""
    names = names_of(kind)
    if name not in names:
        what = {"criterion": "criterion", "search": "search method", None: "method"}[kind]
        raise InputError(f"unknown {what} {name!r} (choose from {', '.join(names)})")
    return METHODS[name]


def names_of(kind: Kind | None = None, needs_data: bool | None = None) -> tuple[str, ...]:
    """Names of the registered methods, optionally of one kind or data need, in registry order."""
    return tuple(m.name for m in METHODS.values()
                 if (kind is None or m.kind == kind) and (needs_data is None or m.needs_data == needs_data))


def search_flags() -> dict[str, list[tuple[str, Flag]]]:
    """Each named flag of the search methods with the (method name, flag) pairs that take it, in
    registry order."""
    out: dict[str, list[tuple[str, Flag]]] = {}
    for m in METHODS.values():
        for f in m.flags:
            out.setdefault(f.name, []).append((m.name, f))
    return out
