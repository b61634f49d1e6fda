"""A written model carries the BatchNorm statistics its mask was scored with: the search
evaluator and the API's re-estimation of the written model draw the same calibration images
(`onnxprune.data.calibration_sample`), so the written model scores what the search saw (issue 18;
before, a written sacp winner could score several points off its search score)."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.api import PruneConfig, prune
from onnxprune.bench import evaluate_onnx
from onnxprune.data import calibration_sample, load_dataset
from onnxprune.deps import analyze
from onnxprune.rewrite import apply_keep
from onnxprune.search import EvalConfig, LocalEvaluator
from onnxprune.torchcopy import recalibrate_batchnorm, to_torch
from tests.tiny import digits_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _half_mask(analysis) -> np.ndarray:
    """Every other unit of every prunable group removed (each keeps at least one)."""
    keep = analysis.full_keep()
    for g in analysis.prunable():
        units = np.arange(g.unit_slice.start, g.unit_slice.stop)
        keep[units[1::2]] = False
    return keep


def test_calibration_sample_is_seeded_and_in_index_order() -> None:
    x = np.arange(1000, dtype=np.float32)[:, None]
    a, b, c = calibration_sample(x, 100, 3), calibration_sample(x, 100, 3), calibration_sample(x, 100, 4)
    assert a.shape == (100, 1) and np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.all(np.diff(a[:, 0]) > 0)  # distinct, in index order
    assert len(calibration_sample(x[:10], 100, 3)) == 10


@pytest.mark.parametrize("folded", [False, True], ids=["bn", "folded"])
def test_written_model_scores_what_the_evaluator_scored(folded: bool) -> None:
    splits, model = digits_model(folded=folded)
    analysis = analyze(model)
    keep = _half_mask(analysis)
    seed, batches, batch_size = 5, 2, 64
    ev = LocalEvaluator(analysis, to_torch(analysis), splits,
                        EvalConfig(images=None, bn_batches=batches, bn_batch_size=batch_size, seed=seed))
    masked = ev.evaluate([keep], images=0)[0]
    x_val, y_val = splits.val
    one_image = 1.0 / len(y_val)

    def written(calib_seed: int) -> float:
        out, n = recalibrate_batchnorm(apply_keep(analysis, keep), splits.train[0], batches=batches,
                                       batch_size=batch_size, seed=calib_seed, original=analysis, keep=keep)
        assert n > 0
        return evaluate_onnx(out, x_val, y_val).top1

    assert written(seed) == pytest.approx(masked, abs=one_image + 1e-9)
    # the check can fail: statistics from other images give another score
    assert abs(written(seed + 1) - masked) > one_image


def test_api_writes_the_searched_score() -> None:
    """Through the API (fitted evaluation batches, `--calib-images`): rl-pruner without
    post-training returns a masked mask; the written file scores its `val_top1`."""
    _, model = digits_model(folded=True)
    cfg = PruneConfig(method="rl-pruner", target_flops=0.5, data="digits", seed=2, calib_images=64, eval_images=100,
                      round_to=1, search_progress=False,
                      options={"steps": 1, "stages": 1, "samples": 2, "horizon": 1, "post_epochs": 0})
    result = prune(model, cfg)
    assert result.searched is not None and not result.searched.trained
    splits = load_dataset("digits", input_shape=(1, 1, 8, 8), seed=cfg.seed)
    top1 = evaluate_onnx(result.model, *splits.val).top1
    assert top1 == pytest.approx(result.searched.val_top1, abs=1.0 / len(splits.val[1]) + 1e-9)
