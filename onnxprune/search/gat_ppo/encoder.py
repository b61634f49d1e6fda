"""The multi-head graph attention encoder of gat-ppo, with two interchangeable backends.

`dgl`: `dgl.nn.GATConv` (the reference; needs the pinned environment of
`bash scripts/dev.sh dgl-env`). `torch`: `TorchGATConv`, the same math in plain PyTorch, with
the same parameter names and shapes (`fc.weight`, `attn_l`, `attn_r`, `bias`), so either
backend loads the other's `state_dict` and gives the same embeddings.

One GATConv layer (DGL defaults: no residual, bias, LeakyReLU slope 0.2, no dropout):
    Wh = fc(h)                                   # (N, H, F)
    e_ij = LeakyReLU(a_l . Wh_j + a_r . Wh_i)    # for every edge j -> i
    alpha_ij = softmax_j(e_ij)                   # over the incoming edges of i
    h'_i = sum_j alpha_ij Wh_j + bias            # (N, H, F)
The encoder stacks `layers` of them, concatenates the heads (N, H*F) and applies ELU between
layers (not after the last). Weights are always initialized by the torch backend (xavier
normal with the ReLU gain, zero bias, as DGL does) and copied into DGL's modules, so a seed
gives the same initial encoder on both backends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from onnxprune.errors import InputError
from onnxprune.methods import GAT_PPO

BACKENDS = ("auto", "dgl", "torch")
DGL_ENV_HINT = "create its environment with `bash scripts/dev.sh dgl-env` and run .venv-dgl/bin/onnxprune"


def dgl_available() -> bool:
    """Whether `import dgl` works here (DGL 2.1 needs torch 2.0-2.2.1)."""
    try:
        import dgl  # noqa: F401
    except Exception:  # ImportError, or graphbolt's FileNotFoundError under another torch
        return False
    return True


def resolve_backend(name: str) -> str:
    """`auto` -> `dgl` where DGL imports, else `torch`; `dgl` without DGL -> InputError."""
    if name not in BACKENDS:
        raise InputError(f"{GAT_PPO.name}: --gat-backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    if name == "auto":
        return "dgl" if dgl_available() else "torch"
    if name == "dgl" and not dgl_available():
        raise InputError(f"{GAT_PPO.name}: --gat-backend dgl: DGL does not import in this environment; {DGL_ENV_HINT}")
    return name


@dataclass(eq=False)
class Edges:
    """A directed graph as edge lists (`src[k] -> dst[k]`), with its DGL graph made once."""

    src: torch.Tensor  # (E,) int64
    dst: torch.Tensor  # (E,) int64
    num_nodes: int
    _dgl: Any = field(default=None, repr=False)

    @classmethod
    def of(cls, src: np.ndarray, dst: np.ndarray, num_nodes: int, device: torch.device | str | None = None) -> "Edges":
        return cls(torch.as_tensor(src, dtype=torch.int64, device=device),
                   torch.as_tensor(dst, dtype=torch.int64, device=device), num_nodes)

    @property
    def device(self) -> torch.device:
        return self.src.device

    def dgl(self) -> Any:
        if self._dgl is None:
            import dgl

            self._dgl = dgl.graph((self.src, self.dst), num_nodes=self.num_nodes, device=self.src.device)
        return self._dgl


class TorchGATConv(nn.Module):
    """`dgl.nn.GATConv(in_feats, out_feats, num_heads)` with its defaults, in plain PyTorch."""

    def __init__(self, in_feats: int, out_feats: int, num_heads: int, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.num_heads, self.out_feats = num_heads, out_feats
        self.fc = nn.Linear(in_feats, out_feats * num_heads, bias=False)
        self.attn_l = nn.Parameter(torch.empty(1, num_heads, out_feats))
        self.attn_r = nn.Parameter(torch.empty(1, num_heads, out_feats))
        self.bias = nn.Parameter(torch.empty(num_heads * out_feats))
        self.negative_slope = negative_slope
        self.reset_parameters()

    def reset_parameters(self) -> None:
        gain = nn.init.calculate_gain("relu")
        nn.init.xavier_normal_(self.fc.weight, gain=gain)
        nn.init.xavier_normal_(self.attn_l, gain=gain)
        nn.init.xavier_normal_(self.attn_r, gain=gain)
        nn.init.zeros_(self.bias)

    def forward(self, edges: Edges, h: torch.Tensor) -> torch.Tensor:
        n, heads, out = h.shape[0], self.num_heads, self.out_feats
        src, dst = edges.src, edges.dst
        wh = self.fc(h).view(n, heads, out)  # (N, H, F)
        el = (wh * self.attn_l).sum(-1)  # (N, H) source term
        er = (wh * self.attn_r).sum(-1)  # (N, H) destination term
        e = nn.functional.leaky_relu(el[src] + er[dst], self.negative_slope)  # (E, H)
        index = dst.unsqueeze(1).expand(-1, heads)
        emax = torch.full((n, heads), float("-inf"), dtype=e.dtype, device=e.device).scatter_reduce(
            0, index, e.detach(), reduce="amax", include_self=True)
        w = torch.exp(e - emax[dst])  # (E, H)
        denom = torch.zeros(n, heads, dtype=e.dtype, device=e.device).index_add(0, dst, w)
        alpha = w / denom[dst]  # edge softmax per destination
        msg = alpha.unsqueeze(-1) * wh[src]  # (E, H, F)
        rst = torch.zeros(n, heads, out, dtype=wh.dtype, device=wh.device).index_add(0, dst, msg)
        return rst + self.bias.view(1, heads, out)


class GATEncoder(nn.Module):
    """`layers` multi-head GAT layers: (N, in_dim) -> (N, heads * hidden)."""

    def __init__(self, in_dim: int, hidden: int, heads: int, layers: int, backend: str = "torch") -> None:
        super().__init__()
        if backend not in ("dgl", "torch"):
            raise InputError(f"{GAT_PPO.name}: unknown GAT backend {backend!r} (resolve 'auto' first)")
        self.backend = backend
        self.out_dim = hidden * heads
        dims = [in_dim] + [hidden * heads] * layers
        reference = [TorchGATConv(dims[i], hidden, heads) for i in range(layers)]
        if backend == "torch":
            self.convs = nn.ModuleList(reference)
        else:
            from dgl.nn import GATConv

            convs = []
            for i, ref in enumerate(reference):
                with torch.random.fork_rng():  # DGL's own init draws numbers: keep the seeded stream
                    conv = GATConv(dims[i], hidden, heads)  # as the torch backend leaves it
                conv.load_state_dict(ref.state_dict())
                convs.append(conv)
            self.convs = nn.ModuleList(convs)

    def forward(self, edges: Edges, x: torch.Tensor) -> torch.Tensor:
        h = x
        for i, conv in enumerate(self.convs):
            h = conv(edges.dgl(), h) if self.backend == "dgl" else conv(edges, h)
            h = h.flatten(1)  # (N, H*F)
            if i < len(self.convs) - 1:
                h = nn.functional.elu(h)
        return h
