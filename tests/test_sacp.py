"""sacp: layer graph and features, contrastive training (loss, separation of L1 from random
masks on held-out configurations), the seeded search (budgets, determinism, resume, the top-k
fine-tune), options and the rank correlations."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence
from unittest import mock

import numpy as np
import onnx
import pytest
import torch

from onnxprune.api import rewrite_and_verify, search_callables
from onnxprune.cli import main
from onnxprune.criteria import weight_scores
from onnxprune.deps import Analysis
from onnxprune.errors import InputError
from onnxprune.search import Budget, EvalConfig, LocalEvaluator, SearchConfig, SearchResult, run_search
from onnxprune.search import sacp
from onnxprune.torchcopy import recalibrate_batchnorm, to_torch
from tests.tiny import digits_model

FAST = {"configs": 120, "candidates": 150, "top_m": 6, "top_k": 2, "epochs": 8, "probe": 2, "eval_batch": 3,
        "proxy_configs": 24, "proxy_images": 64, "light_images": 192}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _search(tiny: tuple[Any, Analysis], budget: Budget = Budget("macs", 0.5), seed: int = 0,
            evaluator: Any = None, **cfg: Any) -> SearchResult:
    splits, analysis = tiny
    options = {**FAST, **cfg.pop("options", {})}
    # round_to=1 unless a test asks: sacp's candidates are not rounded yet; `ctx.finish` rounds (and
    # re-scores) the winner under auto rounding, which the winner/weights checks below do not model
    cfg.setdefault("round_to", 1)
    scfg = SearchConfig(budget=budget, seed=seed, eval=EvalConfig(images=100, bn_batches=2, bn_batch_size=64),
                        progress=False, options=options, **cfg)
    return run_search("sacp", analysis, to_torch(analysis), splits, scfg, evaluator=evaluator,
                      **search_callables(analysis, splits))


def _written_model(tiny: tuple[Any, Analysis], result: SearchResult) -> onnx.ModelProto:
    """The model the API writes for `result`: rewritten, verified, BatchNorm re-estimated as the
    search's evaluator does (unless the method trained the weights)."""
    splits, analysis = tiny
    model, verified = rewrite_and_verify(analysis, result.keep, result)
    assert verified is not None
    if not result.trained:
        model, _ = recalibrate_batchnorm(model, splits.train[0], batches=2, batch_size=64, seed=0)
    return model


def _ort_top1(model: onnx.ModelProto, splits: Any) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x, y = splits.val
    logits = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return float((logits.argmax(1) == y).mean())


def test_rank_correlations_match_hand_worked_examples() -> None:
    # one swap in each half: d = (-1, 1, -1, 1, 0), rho = 1 - 6*4/(5*24) = 0.8; 8 concordant, 2 discordant pairs
    assert sacp.spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    assert sacp.kendall([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.6)
    # a tie in x: ranks (1, 2.5, 2.5, 4) vs (1, 3, 2, 4): rho = 4.5 / sqrt(4.5 * 5); tau-b = 5 / sqrt(5 * 6)
    assert sacp.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(3 / np.sqrt(10))
    assert sacp.kendall([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(5 / np.sqrt(30))
    assert sacp.spearman([3, 2, 1], [1, 2, 3]) == pytest.approx(-1.0)
    assert np.isnan(sacp.spearman([1, 1, 1], [1, 2, 3])) and np.isnan(sacp.kendall([1, 1, 1], [1, 2, 3]))
    assert sacp.auc(np.array([2.0, 3.0]), np.array([1.0, 2.0])) == pytest.approx(0.875)
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, 30).astype(float), rng.integers(0, 5, 30).astype(float)  # many ties
    assert sacp.spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x, y)[0])
    assert sacp.kendall(x, y) == pytest.approx(scipy_stats.kendalltau(x, y)[0])


def test_layer_graph_and_features(tiny) -> None:
    #   stem: Conv-BN -> down1: Conv-BN --------------------> Add -> down2: Conv-BN -> ReduceMean -> Gemm
    #                              \-> block: Conv-BN -> Conv-BN -/
    _, analysis = tiny
    graph = sacp.build_graph(analysis, feature_len=16)
    assert graph.op_types == ("Conv", "BatchNormalization") * 4 + ("Add", "Conv", "BatchNormalization",
                                                                   "ReduceMean", "Gemm")
    assert (3, 8) in graph.edges and (7, 8) in graph.edges and (8, 9) in graph.edges  # the residual Add
    assert len(graph.edges) == 13  # Relu nodes are bridged
    assert torch.allclose(graph.a_hat, graph.a_hat.T)
    assert graph.channels.tolist()[:4] == [16, 16, 32, 32] and graph.channels[-1] == 10
    scores = weight_scores(analysis, "l1")
    tables = sacp.UnitTables.build(analysis, scores, 0.1)
    counts = tables.counts(np.full((1, tables.units.size), 0.5))
    keep = tables.l1_keep(counts)[0]
    x, s = graph.features(keep[None])
    assert x.shape == (1, len(graph.nodes), 16)
    stem = analysis.prunable()[0]
    assert x[0, 0].numpy().tolist() == keep[stem.unit_slice].astype(float).tolist()  # 16 channels, no pooling
    assert s[0, 0, 0].item() == pytest.approx(0.5)  # kept fraction
    down = analysis.groups.members[[rm.member.node for rm in analysis.groups.members].index(graph.nodes[2])].units
    pooled = keep[down].reshape(16, 2).mean(1)  # 32 channels averaged in pairs
    assert x[0, 2].numpy() == pytest.approx(pooled)
    assert (x[0, -1, 10:] == 0).all() and (x[0, -1, :10] == 1).all()  # the logits: 10 kept, zero-padded
    # L1 masks keep the highest-L1 units of each group; random masks keep the same counts
    for gi, g in enumerate(analysis.prunable()):
        kept = np.flatnonzero(keep[g.unit_slice])
        assert kept.size == counts[0, gi]
        assert scores[g.unit_slice][kept].min() >= np.delete(scores[g.unit_slice], kept).max()
    rand = tables.random_keep(counts, np.random.default_rng(0))[0]
    assert [rand[g.unit_slice].sum() for g in analysis.prunable()] == counts[0].tolist()


@pytest.mark.parametrize("batch_negatives", [True, False])
def test_contrastive_training_separates_l1_from_random_masks(tiny, batch_negatives: bool) -> None:
    _, analysis = tiny
    cfg = sacp.SacpConfig(configs=200, epochs=20, pairs="l1_random", batch_negatives=batch_negatives)
    graph = sacp.build_graph(analysis, cfg.feature_len)
    tables = sacp.UnitTables.build(analysis, weight_scores(analysis, "l1"), cfg.min_rate)
    full = analysis.full_keep()
    encoder, losses = sacp.train_encoder(graph, tables, full, cfg, np.random.default_rng(0), seed=0)
    assert len(losses) == cfg.epochs
    if batch_negatives:  # chance is log(1 + 64 * 4) = 5.55; random masks at rates near 1 are nearly
        # the anchor itself, which no encoder can push away: the loss stays well above 0
        assert np.mean(losses[-3:]) < 0.4 * np.log(1 + cfg.batch_size * cfg.negatives)
    else:
        assert np.mean(losses[-3:]) < 0.3 * losses[0]  # log(1 + negatives) = 1.61 is chance
    # held-out configurations (another seed), the L1 and the random mask at the same rates
    rng = np.random.default_rng(123)
    counts = tables.counts(sacp.sample_rates(rng, 150, tables.units.size, cfg.min_rate))
    differ = (tables.l1_keep(counts) != tables.random_keep(counts, np.random.default_rng(7))).any(1)
    counts = counts[differ]
    pos = sacp.similarity(encoder, graph, tables.l1_keep(counts), full)
    neg = sacp.similarity(encoder, graph, tables.random_keep(counts, np.random.default_rng(7)), full)
    assert pos.mean() - neg.mean() > 0.2
    assert sacp.auc(pos, neg) > 0.85  # measured about 0.97; an untrained encoder gives about 0.5
    assert np.mean(pos > neg) > 0.9  # same rates, pair by pair
    untrained = sacp.GCNEncoder(len(graph.nodes), cfg.feature_len)
    before = sacp.auc(sacp.similarity(untrained, graph, tables.l1_keep(counts), full),
                      sacp.similarity(untrained, graph, tables.random_keep(counts, np.random.default_rng(7)), full))
    assert before < 0.75


@pytest.mark.parametrize("budget", [Budget("macs", 0.5), Budget("channels", 0.6)])
def test_search_returns_a_feasible_mask_near_the_budget(tiny, budget: Budget) -> None:
    _, analysis = tiny
    # masked scores pick the top k here (light fine-tune: test_light_finetune_ranks_the_top_m)
    result = _search(tiny, budget, options={"light_images": 0})
    ratio = result.summary["budget_ratio"]
    assert budget.target - 0.1 < ratio <= budget.target + 1e-9
    assert not result.summary.get("made_feasible")
    for g in analysis.channel_groups:
        assert result.keep[g.unit_slice].any() and (g.prunable or result.keep[g.unit_slice].all())
    records = result.trajectory.records
    assert [r["epoch"] for r in records if r.get("stage") == "train"] == list(range(FAST["epochs"]))
    light = [r for r in records if r.get("stage") == "light"]
    assert [r["rank"] for r in light] == list(range(FAST["top_m"]))
    assert all(r["feasible"] and r["budget_ratio"] <= budget.target + 1e-9 for r in light)
    assert len([r for r in records if r.get("stage") == "probe"]) == FAST["probe"]
    full = [r for r in records if r.get("stage") == "full"]
    assert len(full) == FAST["top_k"]
    assert result.summary["masked_val_top1"] == pytest.approx(max(r["val_top1"] for r in full), abs=1e-6)
    # the winner is written with its BatchNorm re-estimated: it scores what the masked search saw
    assert not result.trained and result.val_top1 == pytest.approx(_ort_top1(_written_model(tiny, result), tiny[0]),
                                                                   abs=0.01)
    # ... and the evaluator's masked score: both re-estimate BatchNorm on the same images (one image of slack)
    assert result.val_top1 == pytest.approx(result.summary["masked_val_top1"], abs=1.0 / len(tiny[0].val[1]) + 1e-9)
    assert -1.0 <= result.summary["spearman"] <= 1.0 and -1.0 <= result.summary["kendall"] <= 1.0
    sims = [r["similarity"] for r in light]
    assert result.summary["spearman"] == pytest.approx(sacp.spearman(sims, [r["val_top1"] for r in light]),
                                                       abs=1e-5)
    proxy = [r for r in records if r.get("stage") == "proxy"]
    assert len(proxy) == 1 and 2 <= proxy[0]["masks"] <= FAST["proxy_configs"]
    assert result.evaluations == proxy[0]["masks"] + FAST["top_m"] + FAST["probe"] + FAST["top_k"]
    picked, *marks = result.summary["picked"].split("+")  # the framework appends +rounded / +made_feasible
    assert picked in ("uniform_l1", "ranked_l1")
    assert ("rounded" in marks) == bool(result.summary.get("rounded"))
    assert ("made_feasible" in marks) == bool(result.summary.get("made_feasible"))
    assert not any(r["light_finetuned"] for r in light) and result.summary["light_evaluations"] == 0


def test_light_finetune_ranks_the_top_m(tiny) -> None:
    result = _search(tiny)  # light_images 192
    records = result.trajectory.records
    light = [r for r in records if r.get("stage") == "light"]
    full = [r for r in records if r.get("stage") == "full"]
    assert len(light) == FAST["top_m"] and len(full) == FAST["top_k"]
    # the light fine-tune's score is what the top k are chosen by; the masked score is kept beside it
    assert all(r["light_finetuned"] and 0 <= r["masked_val_top1"] <= 1 for r in light)
    assert any(r["val_top1"] != r["masked_val_top1"] for r in light)
    assert result.summary["light_evaluations"] == FAST["top_m"] + FAST["probe"]
    assert result.summary["total_evaluations"] == result.evaluations + FAST["top_m"] + FAST["probe"]
    chosen = sorted(light, key=lambda r: (-r["val_top1"], r["rank"]))[:FAST["top_k"]]
    assert sorted(r["rank"] for r in full) == sorted(r["rank"] for r in chosen)
    assert -1.0 <= result.summary["masked_vs_light_spearman"] <= 1.0


def test_same_seed_same_mask(tiny) -> None:
    a, b = _search(tiny, seed=3), _search(tiny, seed=3)
    assert np.array_equal(a.keep, b.keep) and a.val_top1 == b.val_top1
    assert a.summary["final_loss"] == b.summary["final_loss"]


class _Interrupted(Exception):
    pass


class _FailingEvaluator(LocalEvaluator):
    """Raises on the `fail_at`-th evaluate call (an interrupted search)."""

    def __init__(self, *args: Any, fail_at: int) -> None:
        super().__init__(*args)
        self.calls, self.fail_at = 0, fail_at

    def evaluate(self, keeps: Sequence[np.ndarray], images: int | None = None) -> list[float]:
        self.calls += 1
        if self.calls == self.fail_at:
            raise _Interrupted
        return super().evaluate(keeps, images)


def test_resume_continues_an_interrupted_search(tiny, tmp_path: Path) -> None:
    splits, analysis = tiny
    ckpt = str(tmp_path / "sacp.ckpt")
    straight = _search(tiny)
    ev_cfg = EvalConfig(images=100, bn_batches=2, bn_batch_size=64)
    failing = _FailingEvaluator(analysis, to_torch(analysis), splits, ev_cfg, fail_at=3)
    with pytest.raises(_Interrupted):
        _search(tiny, evaluator=failing, checkpoint=ckpt)  # after proxy, training, ranking and one batch
    resumed = _search(tiny, checkpoint=ckpt, resume=True)
    assert np.array_equal(resumed.keep, straight.keep) and resumed.val_top1 == straight.val_top1
    proxy = next(r["masks"] for r in straight.trajectory.records if r.get("stage") == "proxy")
    # the proxy scores (inside the saved encoder) and the saved batch are not redone
    assert resumed.evaluations == straight.evaluations - proxy - FAST["eval_batch"]
    assert resumed.trajectory.records == straight.trajectory.records
    assert resumed.summary["spearman"] == straight.summary["spearman"]


def test_top_k_fine_tune_returns_the_trained_model(tiny) -> None:
    import onnxprune.torchcopy as torchcopy
    from onnxprune.torchcopy.masked import batched_logits

    real_finetune, x = torchcopy.finetune, tiny[0].val[0][:64]
    expected = batched_logits(to_torch(tiny[1]), x)
    teachers: list[float] = []

    def finetune(model: Any, teacher: Any, *args: Any, **kwargs: Any) -> Any:
        # the original distils, not the copy the evaluator has masked in place during the search
        teachers.append(float((batched_logits(teacher, x) - expected).abs().max()))
        return real_finetune(model, teacher, *args, **kwargs)

    with mock.patch.object(torchcopy, "finetune", finetune):
        result = _search(tiny, options={"top_k": 1, "k_finetune_epochs": 1, "k_finetune_images": 300})
    assert len(teachers) == 1 and teachers[0] < 1e-4
    assert result.pruned_weights is not None and result.weights is None
    full = [r for r in result.trajectory.records if r.get("stage") == "full"]
    assert full[0]["finetuned"] and result.val_top1 == pytest.approx(full[0]["val_top1"])
    assert _ort_top1(_written_model(tiny, result), tiny[0]) == pytest.approx(result.val_top1, abs=0.01)  # what it claims
    assert result.val_top1 > 0.5  # ten classes


def test_options_and_presets() -> None:
    assert sacp.sacp_options({}) == sacp.SacpConfig()
    paper = sacp.sacp_options({"preset": "paper", "top_k": "5"})
    assert (paper.configs, paper.candidates, paper.top_m, paper.top_k) == (10_000, 1_000_000, 150, 5)
    for bad, match in [({"top_k": 50}, "top_k"), ({"preset": "huge"}, "unknown preset"),
                       ({"temprature": 1}, "unknown option"), ({"epochs": "x"}, "cannot read"),
                       ({"configs": 0}, "configs")]:
        with pytest.raises(InputError, match=match):
            sacp.sacp_options(bad)


def test_bad_option_is_a_one_line_cli_error(tiny, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, model = digits_model()
    src = tmp_path / "tiny.onnx"
    onnx.save(model, str(src))
    code = main(["prune", str(src), "-o", str(tmp_path / "out.onnx"), "--method", "sacp", "--target-flops", "0.5",
                 "--data", "digits", "--option", "top_k=99"])
    err = capsys.readouterr().err.strip().splitlines()  # progress lines, then the error
    assert code == 2 and err[-1].startswith("onnxprune: error: sacp:") and "top_k" in err[-1]
    assert not any("Traceback" in line for line in err)
    assert not (tmp_path / "out.onnx").exists()


def test_ranked_info_nce_hand_worked() -> None:
    from onnxprune.search.sacp.pairs import ranked_info_nce

    # cosines to the anchor 1, 0, 1/sqrt(2); only mask 0 has negatives (masks 1 and 2 scored 0.4 lower)
    anchor, z = torch.tensor([1.0, 0.0]), torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    loss = ranked_info_nce(anchor, z, torch.tensor([0.9, 0.5, 0.5]), 1.0, 0.1)
    assert float(loss) == pytest.approx(np.log(np.e + 1 + np.exp(2 ** -0.5)) - 1, abs=1e-6)
    assert float(ranked_info_nce(anchor, z, torch.tensor([0.5, 0.5, 0.55]), 1.0, 0.1)) == 0.0  # no pair apart


def test_proxy_pairs_teach_what_equal_cost_masks_differ_in(tiny) -> None:
    from onnxprune.search.sacp.pairs import train_ranked

    # masks of equal per-group counts scored by a hidden set of units: density cannot tell them apart
    _, analysis = tiny
    graph = sacp.build_graph(analysis, 64)
    tables = sacp.UnitTables.build(analysis, weight_scores(analysis, "l1"), 0.1)
    full, rng = analysis.full_keep(), np.random.default_rng(0)
    hidden = rng.random(full.size) < 0.3
    keeps = tables.random_keep(tables.counts(np.full((200, tables.units.size), 0.5)), rng)
    proxy = (keeps & hidden).sum(1) / hidden.sum()
    torch.manual_seed(0)
    encoder = sacp.GCNEncoder(len(graph.nodes), 64)
    before = sacp.spearman(sacp.similarity(encoder, graph, keeps[96:], full), proxy[96:])
    losses = train_ranked(encoder, graph.features, graph.a_hat, keeps[:96], proxy[:96], full, epochs=30, lr=1e-3,
                          batch_size=32, temperature=0.2, margin=0.01, rng=rng)
    assert losses[-1] < 0.5 * losses[0]
    after = sacp.spearman(sacp.similarity(encoder, graph, keeps[96:], full), proxy[96:])  # held-out masks
    assert after > 0.4 and after > before + 0.3
