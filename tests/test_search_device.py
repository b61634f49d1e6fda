"""`--device` reaches the search methods' own torch work: gat-ppo's policy, sacp's GCN encoder,
its light and top-k fine-tunes, rl-pruner's post-training student, teacher and batches.

No GPU here: the search context's device is replaced by `cpu:0`, a CPU device that compares
unequal to the default `cpu`, and every `Module.to` / batch move is recorded. A method that
ignored the device would move nothing to `cpu:0`. The results must equal those of a plain CPU
run (the device changes where the work runs, not what it computes). CUDA asked for on a machine
without one is exit 2 (`tests/test_streaming.py`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from onnxprune.api import search_callables
from onnxprune.deps import Analysis
from onnxprune.search import Budget, EvalConfig, SearchConfig, SearchContext, SearchResult, run_search
from onnxprune.torchcopy import to_torch
from onnxprune.torchcopy import device as device_mod

MARK = torch.device("cpu", 0)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def moves(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, torch.device]]:
    """The search context's device is `MARK`; records (what, device) of every move to a device."""
    seen: list[tuple[str, torch.device]] = []
    monkeypatch.setattr(SearchContext, "device", property(lambda self: MARK))
    module_to = torch.nn.Module.to

    def spy_module(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        dev = args[0] if args else kwargs.get("device")
        if isinstance(dev, (str, torch.device)):
            seen.append((type(self).__name__, torch.device(dev)))
        return module_to(self, *args, **kwargs)

    batch_to = device_mod.to_device_batch

    def spy_batch(x: Any, device: torch.device, channels_last: bool = False) -> torch.Tensor:
        seen.append(("batch", torch.device(device)))
        return batch_to(x, device, channels_last)

    monkeypatch.setattr(torch.nn.Module, "to", spy_module)
    monkeypatch.setattr(device_mod, "to_device_batch", spy_batch)
    import onnxprune.search.rl_pruner.posttrain as posttrain

    monkeypatch.setattr(posttrain, "to_device_batch", spy_batch)
    return seen


def _search(tiny: tuple[Any, Analysis], method: str, options: dict[str, Any]) -> SearchResult:
    splits, analysis = tiny
    cfg = SearchConfig(budget=Budget("macs", 0.5), seed=1, progress=False, round_to=1, options=options,
                       eval=EvalConfig(images=100, bn_batches=1, bn_batch_size=64))
    return run_search(method, analysis, to_torch(analysis), splits, cfg, **search_callables(analysis, splits))


GAT_PPO = {"episodes": 8, "batch": 4, "gat_backend": "torch", "pretrain_steps": 5, "final_top": 1}
SACP = {"configs": 40, "candidates": 40, "top_m": 2, "top_k": 1, "epochs": 2, "probe": 1, "eval_batch": 2,
        "proxy_configs": 12, "proxy_images": 32, "light_images": 64, "k_finetune_epochs": 1,
        "k_finetune_images": 64}
RL_PRUNER = {"steps": 1, "stages": 1, "samples": 2, "post_images": 64, "calibration": 32}


@pytest.mark.parametrize("method, options, movers", [
    ("gat-ppo", GAT_PPO, {"ActorCritic"}),
    ("sacp", SACP, {"GCNEncoder", "GraphModule", "batch"}),  # encoder; light and top-k fine-tunes
    ("sacp", {**SACP, "pairs": "l1_random"}, {"GCNEncoder"}),  # the paper's pairs: `train_encoder`
    ("rl-pruner", RL_PRUNER, {"GraphModule", "batch"}),  # post-training student / teacher, its batches
])
def test_device_reaches_the_search_method(tiny: tuple[Any, Analysis], moves: list[tuple[str, torch.device]],
                                          method: str, options: dict[str, Any], movers: set[str]) -> None:
    marked = _search(tiny, method, options)
    to_mark = {what for what, dev in moves if dev == MARK}
    assert movers <= to_mark, f"{method}: moved to the search's device: {sorted(to_mark)}"
    moves.clear()
    plain = _search_plain(tiny, method, options)
    np.testing.assert_array_equal(marked.keep, plain.keep)
    assert marked.val_top1 == pytest.approx(plain.val_top1, abs=1e-9)


def _search_plain(tiny: tuple[Any, Analysis], method: str, options: dict[str, Any]) -> SearchResult:
    """The same search with the context's own device (the CPU)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SearchContext, "device", _ORIGINAL_DEVICE)
        return _search(tiny, method, options)


_ORIGINAL_DEVICE = SearchContext.__dict__["device"]


def test_context_device_follows_the_eval_config() -> None:
    """The API writes `--device` (resolved) into `cfg.eval.device`; the context reads it there."""
    def device_of(cfg: SearchConfig) -> torch.device:
        return _ORIGINAL_DEVICE.fget(type("Ctx", (), {"cfg": cfg})())

    assert device_of(SearchConfig(eval=EvalConfig(device="cpu:0"))) == MARK
    assert device_of(SearchConfig()) == torch.device("cpu")
