"""`--method sacp` options: `SacpConfig`, its presets, and parsing from `--option` values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from onnxprune.errors import InputError
from onnxprune.methods import SACP
from onnxprune.search.base import parse_options

METHOD = SACP.name
PAIRS = ("proxy", "l1_random")


@dataclass(frozen=True)
class SacpConfig:
    """Options of `--method sacp` (CPU scale; `preset=paper` gives the paper's scale).

    `configs` N training configurations, `candidates` M searched rate combinations, `top_m`
    candidates scored on the cheap subset, `top_k` of those on the whole validation split.
    `epochs`, `lr`, `batch_size`, `temperature`: contrastive training; `negatives` random masks
    per configuration (at its rates). `hidden`, `layers`,
    `proj`: encoder widths and GCN depth. `feature_len`: keep-vector length per node.
    `node_weights`: node-specific first layer (False: the paper's shared weights, an ablation).
    `min_rate`: lowest per-group keep rate sampled. `probe`: extra candidates from the rest of the
    ranking, evaluated only to measure the rank correlation. `k_finetune_epochs` (> 0: KD
    fine-tune of each top-k pruned ONNX, BatchNorm re-estimated first) on `k_finetune_images`
    training images (0: all). `recalibrate_output`: return the winner as a pruned ONNX with its
    BatchNorm statistics re-estimated (what the candidates were scored with) when not fine-tuned.
    `eval_batch`: candidates per evaluation call (a checkpoint after each).
    `light_images` (> 0): the paper's light fine-tune of the top m (and the probes) before the top
    k are picked: one epoch of distillation from the original (tau 0.75, T 4, SGD at `light_lr`)
    on that many training images, mask enforced, then top-1 on the cheap validation subset; the
    weights are only used to rank (0: masked evaluation with BatchNorm re-estimated, no training).
    `pairs`: what the encoder is trained to tell apart. `proxy` (default): `proxy_configs`
    budget-feasible L1 masks drawn like the candidates, scored by masked top-1 on `proxy_images`
    validation images; each is a positive against the masks of its mini-batch that scored lower
    by at least `margin` (`pairs.py`). `l1_random` (the paper's): L1 masks against random masks
    at the same rates, `negatives` per configuration, each positive against all negatives of
    the mini-batch (`batch_negatives`; false: only its own configuration's).
    """

    configs: int = 300
    candidates: int = 3000
    top_m: int = 24
    top_k: int = 3
    epochs: int = 30
    lr: float = 1e-3
    batch_size: int = 64
    negatives: int = 4
    temperature: float = 0.2
    hidden: int = 64
    layers: int = 2
    proj: int = 32
    feature_len: int = 64
    node_weights: bool = True
    min_rate: float = 0.1
    probe: int = 8
    k_finetune_epochs: int = 0
    k_finetune_images: int = 3000
    recalibrate_output: bool = True
    eval_batch: int = 8
    light_images: int = 512
    light_lr: float = 0.01
    pairs: str = "proxy"
    proxy_configs: int = 96
    proxy_images: int = 256
    margin: float = 0.01
    batch_negatives: bool = True

    def __post_init__(self) -> None:
        if self.pairs not in PAIRS:
            raise InputError(f"{METHOD}: pairs must be one of {', '.join(PAIRS)}, got {self.pairs!r}")
        if self.proxy_configs < 2 or self.proxy_images < 1 or self.margin < 0:
            raise InputError(f"{METHOD}: proxy_configs must be >= 2, proxy_images >= 1 and margin >= 0")
        if self.light_lr <= 0:
            raise InputError(f"{METHOD}: light_lr must be > 0, got {self.light_lr}")
        for name in ("configs", "candidates", "top_m", "top_k", "epochs", "batch_size", "negatives", "hidden", "layers", "proj",
                     "feature_len", "eval_batch"):
            if getattr(self, name) < 1:
                raise InputError(f"{METHOD}: option {name} must be >= 1, got {getattr(self, name)}")
        for name in ("probe", "k_finetune_epochs", "k_finetune_images", "light_images"):
            if getattr(self, name) < 0:
                raise InputError(f"{METHOD}: option {name} must be >= 0, got {getattr(self, name)}")
        if self.top_k > self.top_m:
            raise InputError(f"{METHOD}: top_k ({self.top_k}) must be <= top_m ({self.top_m})")
        if self.top_m > self.candidates:
            raise InputError(f"{METHOD}: top_m ({self.top_m}) must be <= candidates ({self.candidates})")
        if self.lr <= 0 or self.temperature <= 0:
            raise InputError(f"{METHOD}: lr and temperature must be > 0")
        if not 0.0 < self.min_rate <= 1.0:
            raise InputError(f"{METHOD}: min_rate must be in (0, 1], got {self.min_rate}")


PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {},
    "paper": {"configs": 10_000, "candidates": 1_000_000, "top_m": 150, "top_k": 10, "epochs": 100,
              "hidden": 128, "pairs": "l1_random", "k_finetune_epochs": 1, "k_finetune_images": 0, "eval_batch": 16},
}


def sacp_options(options: dict[str, Any]) -> SacpConfig:
    """The method's config from `--option` values; `preset` picks the base values."""
    return parse_options(SacpConfig, options, METHOD, presets=PRESETS)
