"""Models exported with BatchNorm folded into Conv (what users export by default): BatchNorm
re-inserted into the torch copy without changing the function, folded back exactly, used for
BatchNorm re-estimation after pruning and for fine-tuning; a fine-tune that diverges fails loudly.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from onnxprune.bench.accuracy import evaluate_onnx
from onnxprune.criteria import weight_scores
from onnxprune.deps import analyze
from onnxprune.errors import FinetuneDivergedError
from onnxprune.rewrite import apply_keep
from onnxprune.search import AllocationConfig, allocate
from onnxprune.torchcopy import FinetuneConfig, MaskedModel, finetune, recalibrate_batchnorm, to_torch
from onnxprune.torchcopy.batchnorm import ReinsertedBatchNorm, eligible_layers
from onnxprune.numerics import compare_outputs, session
from onnxprune.torchcopy.convert import torch_outputs

pytest.importorskip("sklearn")
from tests.tiny import digits_model  # noqa: E402

CLI = [sys.executable, "-m", "onnxprune.cli"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def folded():
    """(splits, folded ONNX, BN-kept ONNX) of the same trained digits ResNet."""
    splits, kept = digits_model()
    _, fold = digits_model(folded=True)
    assert not any(n.op_type == "BatchNormalization" for n in fold.graph.node)
    assert sum(n.op_type == "BatchNormalization" for n in kept.graph.node) == 5
    return splits, fold, kept


def _pruned(model: onnx.ModelProto, sparsity: float = 0.6):
    analysis = analyze(model)
    keep = allocate(analysis, weight_scores(analysis, "l1"), AllocationConfig(sparsity=sparsity))
    return analysis, keep, apply_keep(analysis, keep)


def _structure(model: onnx.ModelProto) -> list[tuple[str, tuple[str, ...]]]:
    return [(n.op_type, tuple(n.input)) for n in model.graph.node]


def test_reinsertion_leaves_the_function_unchanged(folded) -> None:
    splits, fold, _ = folded
    copy = to_torch(fold)
    x = splits.test[0][:64]
    feeds = {copy.input_names[0]: x}
    expect = session(fold).run(None, feeds)
    bn = ReinsertedBatchNorm(copy, splits.train[0][:256])
    assert len(bn) == 5  # every Conv: stem, down1, block x2, down2 (not the classifier Gemm)
    assert len(eligible_layers(copy, linear=True)) == 5  # the Gemm's output is the graph output
    got = torch_outputs(copy, feeds)
    diff, scale = compare_outputs(got, expect, ["logits"], "re-inserted BatchNorm", rtol=1e-5, atol=1e-6)
    assert diff <= 1e-5 * scale
    # the BatchNorm is really there: in train mode on one image batch statistics change the output
    copy.module.train()
    bn.train(True)
    with torch.no_grad():
        moved = copy.logits(torch.from_numpy(x[:4]))
    assert not np.allclose(moved.numpy(), expect[0][:4], atol=1e-2)
    copy.module.eval()
    bn.remove()
    compare_outputs(torch_outputs(copy, feeds), expect, ["logits"], "BatchNorm removed", rtol=1e-5, atol=1e-6)


def test_models_that_keep_batchnorm_get_none(folded) -> None:
    _, _, kept = folded
    assert eligible_layers(to_torch(kept)) == []


def test_fold_back_reproduces_the_trained_student_in_onnx(folded) -> None:
    splits, fold, _ = folded
    copy = to_torch(fold)
    bn = ReinsertedBatchNorm(copy, splits.train[0][:256])
    params = [p for p in copy.module.parameters() if p.requires_grad] + bn.parameters()
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    x, y = torch.from_numpy(splits.train[0]), torch.from_numpy(splits.train[1]).long()
    copy.module.train()
    bn.train(True)
    for idx in torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:640].split(64):
        loss = torch.nn.functional.cross_entropy(copy.logits(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    copy.module.eval()
    bn.train(False)
    feeds = {copy.input_names[0]: splits.test[0][:128]}
    student = torch_outputs(copy, feeds)  # the trained student, BatchNorm and all
    moved = [float(bn.bn(lay.target).running_mean.abs().max()) for lay in bn.layers]
    assert max(moved) > 0
    bn.fold()
    model = copy.write_back()
    assert _structure(model) == _structure(copy.model)  # same nodes, same initializer names
    onnx.checker.check_model(model)
    written = session(model).run(None, feeds)
    diff, scale = compare_outputs(written, student, ["logits"], "folded-back student", rtol=1e-5, atol=1e-5)
    assert diff <= 1e-5 * max(1.0, scale)
    assert not np.allclose(written[0], session(fold).run(None, feeds)[0], atol=1e-2)  # it did train


def test_masked_evaluation_reestimates_batchnorm_on_folded_models(folded) -> None:
    splits, fold, kept = folded
    x_val, y_val = splits.val
    x_bn = splits.train[0][:512]
    tops = {}
    for name, model in (("folded", fold), ("kept", kept)):
        analysis = analyze(model)
        copy = to_torch(analysis)
        plain = copy.logits(torch.from_numpy(x_val[:32])).detach().clone()
        masked = MaskedModel(copy, analysis, threads=1)
        assert masked.batchnorms == 5
        keep = allocate(analysis, weight_scores(analysis, "l1"), AllocationConfig(sparsity=0.6))
        masked.apply(keep)
        raw = masked.evaluate(x_val, y_val)[0]
        assert masked.recalibrate_bn(x_bn) == 5
        tops[name] = (raw, masked.evaluate(x_val, y_val)[0])
        masked.reset()
        # outside MaskedModel the copy computes what it did (the re-inserted layers act only inside)
        assert torch.allclose(copy.logits(torch.from_numpy(x_val[:32])), plain, atol=1e-5)
        assert torch.allclose(masked.logits(x_val[:32]), plain, atol=1e-4)
    assert tops["folded"][1] > tops["folded"][0] + 0.2  # re-estimation helps as with BatchNorm kept
    assert abs(tops["folded"][1] - tops["kept"][1]) < 0.1


def test_recalibrate_batchnorm_of_a_pruned_folded_model(folded) -> None:
    splits, fold, kept = folded
    x_val, y_val = splits.val
    analysis, keep, pruned = _pruned(fold)
    same, count = recalibrate_batchnorm(pruned, splits.train[0])
    assert count == 0 and same is pruned  # without the unpruned model there is nothing to aim at
    fixed, count = recalibrate_batchnorm(pruned, splits.train[0], original=analysis, keep=keep)
    assert count == 5
    assert _structure(fixed) == _structure(pruned)
    before, after = evaluate_onnx(pruned, x_val, y_val).top1, evaluate_onnx(fixed, x_val, y_val).top1
    a_kept = analyze(kept)  # same network with its BatchNorm: same groups, so the same mask applies
    assert [g.channels for g in a_kept.channel_groups] == [g.channels for g in analysis.channel_groups]
    p_kept = apply_keep(a_kept, keep)
    bn_kept = evaluate_onnx(recalibrate_batchnorm(p_kept, splits.train[0])[0], x_val, y_val).top1
    assert after > before + 0.2
    assert abs(after - bn_kept) < 0.05


def test_prune_with_data_reestimates_batchnorm_for_data_free_methods(folded) -> None:
    """`prune --method l1 --data X` on a folded model: the written model gets its BatchNorm
    re-estimated under the mask like the data-driven methods' (without it, accuracy collapses)."""
    from onnxprune.api import PruneConfig, prune

    splits, fold, _ = folded
    x_val, y_val = splits.val
    plain = prune(fold, PruneConfig(method="l1", sparsity=0.6))
    with_data = prune(fold, PruneConfig(method="l1", sparsity=0.6, data="digits"))
    assert np.array_equal(plain.keep, with_data.keep)  # same mask: only the weights are re-estimated
    assert "bn_recalibration" in with_data.seconds and "bn_recalibration" not in plain.seconds
    assert _structure(with_data.model) == _structure(plain.model)
    before = evaluate_onnx(plain.model, x_val, y_val).top1
    after = evaluate_onnx(with_data.model, x_val, y_val).top1
    assert after > before + 0.2


def test_folded_model_fine_tunes_above_its_start(folded) -> None:
    splits, fold, _ = folded
    x_test, y_test = splits.test
    analysis, keep, pruned = _pruned(fold)
    pruned, _ = recalibrate_batchnorm(pruned, splits.train[0], original=analysis, keep=keep)  # as `prune` does
    start = evaluate_onnx(pruned, x_test, y_test).top1
    result = finetune(pruned, fold, splits, FinetuneConfig(epochs=2, progress=False, seed=0))
    assert result.reinserted_bn == 5 and result.restarts == 0
    assert result.improved and result.best_val_top1 > result.initial_val_top1 + 0.2
    tuned = evaluate_onnx(result.model, x_test, y_test).top1
    assert tuned > start + 0.2 and tuned > 0.85
    assert _structure(result.model) == _structure(load_normalized(pruned))
    assert result.verify_max_abs_diff is not None and result.verify_max_abs_diff < 1e-3
    assert not any(n.op_type == "BatchNormalization" for n in result.model.graph.node)


def load_normalized(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxprune.ir import load_model

    return load_model(model).model


def test_no_improvement_keeps_the_starting_weights_exactly(folded) -> None:
    splits, fold, _ = folded
    # a learning rate so small that nothing moves: the starting weights come back bit for bit
    result = finetune(fold, fold, splits, FinetuneConfig(epochs=1, lr=1e-12, progress=False, max_train=256))
    assert not result.improved and result.message() is not None
    base = {t.name: numpy_helper.to_array(t) for t in load_normalized(fold).graph.initializer}
    for t in result.model.graph.initializer:
        assert np.array_equal(numpy_helper.to_array(t), base[t.name]), t.name


def test_planted_divergence_is_caught(folded) -> None:
    splits, fold, _ = folded
    _, _, pruned = _pruned(fold)
    with pytest.raises(FinetuneDivergedError, match="diverged"):
        finetune(pruned, fold, splits, FinetuneConfig(epochs=1, lr=1e9, progress=False, max_train=512))


def test_divergence_restarts_with_a_lower_learning_rate(folded) -> None:
    splits, fold, _ = folded
    _, _, pruned = _pruned(fold)
    cfg = FinetuneConfig(epochs=1, lr=1e9, lr_drop=1e-11, max_restarts=1, progress=False, max_train=512,
                         snapshot_steps=2)
    result = finetune(pruned, fold, splits, cfg)
    assert result.restarts == 1 and result.lr == pytest.approx(0.01)
    assert all(np.isfinite(result.train_loss_history))
    assert all(np.all(np.isfinite(numpy_helper.to_array(t))) for t in result.model.graph.initializer)


def test_cli_diverged_fine_tune_exits_nonzero_and_writes_nothing(folded, tmp_path: Path) -> None:
    splits, fold, _ = folded
    src = tmp_path / "folded.onnx"
    onnx.save(fold, str(src))
    run = dict(capture_output=True, text=True, timeout=600)
    out = tmp_path / "tuned.onnx"
    proc = subprocess.run(CLI + ["finetune", str(src), "--teacher", str(src), "--data", "digits", "--epochs", "1",
                                 "--lr", "1e9", "--images", "512", "-o", str(out)], **run)
    assert proc.returncode == 1, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("onnxprune:")]
    assert len(lines) == 1 and "fine-tuning diverged" in lines[0] and "internal error" not in lines[0]
    assert "Traceback" not in proc.stderr and not out.exists()
    pruned, report = tmp_path / "pruned.onnx", tmp_path / "report.json"
    proc = subprocess.run(CLI + ["prune", str(src), "-o", str(pruned), "--target-flops", "0.5", "--data", "digits",
                                 "--finetune-epochs", "1", "--finetune-images", "512", "--finetune-lr", "1e9",
                                 "--report", str(report)], **run)
    assert proc.returncode == 1 and "fine-tuning diverged" in proc.stderr
    assert not pruned.exists() and not report.exists()


def test_cli_fine_tune_that_does_not_improve_says_so(folded, tmp_path: Path) -> None:
    splits, fold, _ = folded
    src = tmp_path / "folded.onnx"
    onnx.save(fold, str(src))
    pruned, report = tmp_path / "pruned.onnx", tmp_path / "report.json"
    proc = subprocess.run(CLI + ["prune", str(src), "-o", str(pruned), "--target-flops", "0.5", "--data", "digits",
                                 "--finetune-epochs", "1", "--finetune-images", "256", "--finetune-lr", "1e-12",
                                 "--report", str(report)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "did not improve" in proc.stderr and "fine-tuned:" not in proc.stdout
    data = json.loads(report.read_text())["finetune"]
    assert data["improved"] is False and data["best_epoch"] == 0


@pytest.mark.zoo
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_zoo_folded_exports_reinsert_and_fold_back(name: str) -> None:
    """The zoo's TorchScript exports are folded (eval-mode export): BatchNorm goes on every Conv
    without changing the function, and a perturbed BatchNorm folds back exactly."""
    from tests import zoo

    model = onnx.load(str(zoo.export(name, "torchscript")))
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)
    copy = to_torch(model)
    x = zoo.example_input(name, batch=4).numpy()
    feeds = {copy.input_names[0]: x}
    expect = session(model).run(None, feeds)
    bn = ReinsertedBatchNorm(copy, x, batch_size=4)
    assert len(bn) == sum(n.op_type == "Conv" for n in model.graph.node)
    compare_outputs(torch_outputs(copy, feeds), expect, ["logits"], "re-inserted BatchNorm", rtol=1e-4, atol=1e-5)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for lay in bn.layers:
            norm = bn.bn(lay.target)
            norm.running_mean.add_(0.01 * torch.randn(norm.running_mean.shape, generator=gen))
            norm.weight.mul_(1 + 0.05 * torch.randn(norm.weight.shape, generator=gen))
    student = torch_outputs(copy, feeds)
    bn.fold()
    written = copy.write_back()
    assert _structure(written) == _structure(copy.model)
    compare_outputs(session(written).run(None, feeds), student, ["logits"], "folded back", rtol=1e-4, atol=1e-5)
