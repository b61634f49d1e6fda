"""Second-tier scoring of a search's finalists: the pruned ONNX of a mask, BatchNorm re-estimated
as the API writes it, optionally distilled briefly from the original, scored on the whole
validation split.

Masked accuracy (the evaluator, tier 1) separates bad allocations from good ones; a brief
distillation fine-tune is the dearer tier a method may spend on its last few candidates
(`docs/gat-ppo-study.md` measures both against accuracy after the full fine-tune). SACP's top-k
fine-tune and gat-ppo's `finalist_images` use these functions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from onnxprune.search.base import SearchContext


def materialize(ctx: SearchContext, keep: np.ndarray) -> Any:
    """The pruned ONNX model of `keep` with the original's weights (the API's `materialize`)."""
    if ctx.materialize is None:
        raise ValueError(f"{ctx.method}: the search context has no materialize (the API passes one)")
    return ctx.materialize(keep)


def recalibrated(ctx: SearchContext, keep: np.ndarray) -> Any:
    """The pruned ONNX of `keep` with BatchNorm statistics re-estimated on training images (as the
    evaluator scores masks)."""
    from onnxprune.torchcopy import recalibrate_batchnorm

    ev = ctx.cfg.eval
    model, _ = recalibrate_batchnorm(materialize(ctx, keep), ctx.splits.train[0], batches=ev.bn_batches,
                                     batch_size=ev.bn_batch_size, seed=ctx.cfg.seed, original=ctx.analysis, keep=keep,
                                     device=ctx.device)
    return model


def recalibrated_model(ctx: SearchContext, keep: np.ndarray) -> tuple[Any, float]:
    """`recalibrated(ctx, keep)` and its top-1 on the whole validation split."""
    model = recalibrated(ctx, keep)
    if ctx.score_model is None:
        raise ValueError(f"{ctx.method}: the search context has no score_model (the API passes one)")
    return model, ctx.score_model(model)


def original_copy(ctx: SearchContext) -> Any:
    """A fresh torch copy of the original, the teacher of any training inside a search.

    Not `ctx.copy`: a local evaluator masks that one in place (and re-estimates its BatchNorm)
    until the search ends, so mid-search it computes the last candidate scored, not the original.
    """
    from onnxprune.torchcopy import to_torch

    return to_torch(ctx.analysis, check=False, seed=ctx.cfg.seed, device=ctx.device)


def brief_finetune(ctx: SearchContext, keep: np.ndarray, images: int | None, teacher: Any, epochs: int = 1,
                   recalibrate: bool = True) -> Any:
    """Distil the pruned model of `keep` from `teacher` (`original_copy(ctx)`, made once per search)
    for `epochs` passes over `images` training images (None: all), BatchNorm re-estimated first
    when `recalibrate`; the `FinetuneResult` (validation top-1 after each epoch on the whole split,
    the model)."""
    from onnxprune.torchcopy import FinetuneConfig, finetune
    from onnxprune.torchcopy.device import fit_batch_size

    start = recalibrated(ctx, keep) if recalibrate else materialize(ctx, keep)  # finetune scores it itself
    dev = ctx.device
    return finetune(start, teacher, ctx.splits, FinetuneConfig(
        epochs=epochs, max_train=images or None, seed=ctx.cfg.seed, progress=False, threads=torch.get_num_threads(),
        device=str(dev), batch_size=fit_batch_size(ctx.analysis, 64, training=True, device=dev),
        eval_batch_size=fit_batch_size(ctx.analysis, 512, training=False, device=dev)))
