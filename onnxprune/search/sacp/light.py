"""The paper's light fine-tune of the top m candidates, before the top k are picked."""

from __future__ import annotations

import numpy as np

from onnxprune.search.base import SearchContext
from onnxprune.search.sacp.config import SacpConfig


class LightFinetune:
    """The light fine-tune of one candidate: a fresh student (the original weights) distilled
    from the original for one epoch of `light_images` training images with the mask enforced
    (`rl_pruner.posttrain.post_train`: removed units stay zero after every step), then its top-1 on the
    cheap validation subset (the evaluator's). The weights only rank: they are not kept."""

    def __init__(self, ctx: SearchContext, cfg: SacpConfig) -> None:
        from onnxprune.search.finalists import original_copy
        from onnxprune.search.rl_pruner.posttrain import state_of
        from onnxprune.torchcopy import to_torch
        from onnxprune.torchcopy.masked import MaskProjection

        self.ctx, self.cfg = ctx, cfg
        from onnxprune.data import take

        self.student = to_torch(ctx.analysis, check=False, seed=ctx.cfg.seed, device=ctx.device)
        self.teacher = original_copy(ctx)
        self.original = state_of(self.student)
        self.projection = MaskProjection(self.student, ctx.analysis)
        x_val, y_val = ctx.splits.val
        order = np.random.default_rng(ctx.cfg.eval.seed).permutation(len(y_val))[:ctx.cfg.eval.images or len(y_val)]
        self.val = (take(x_val, order), y_val[order])  # read a batch at a time when lazy

    def __call__(self, keep: np.ndarray) -> float:
        from onnxprune.search.rl_pruner.posttrain import PostTrainConfig, post_batch_sizes, post_train, top1

        self.student.module.load_state_dict(self.original)
        x, y = self.ctx.splits.train
        post_train(self.student, self.teacher, self.projection, keep, x, y,
                   PostTrainConfig(1, self.cfg.light_images, 0.75, 4.0, self.cfg.light_lr, self.ctx.cfg.seed,
                                   **post_batch_sizes(self.ctx)))
        return top1(self.student, *self.val)
