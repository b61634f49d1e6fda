"""gat-ppo: the GAT backends agree, the state graph and blocks are right, the self-competition
reward has its two phases, and a seeded search on the tiny digits model is feasible, improves,
resumes exactly and refuses bad options in one line.

Tests marked `dgl` need DGL (`bash scripts/dev.sh test-dgl` runs them in .venv-dgl/); elsewhere
they skip.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import onnx
import pytest
import torch

from onnxprune.cli import main
from onnxprune.criteria import weight_scores
from onnxprune.deps import Analysis
from onnxprune.errors import InputError
from onnxprune.search import Budget, EvalConfig, SearchConfig, SearchResult, run_search
from onnxprune.search.base import Checkpoint
from onnxprune.search.gat_ppo import (FEATURE_NAMES, GATEncoder, SelfCompetitionReward, TorchGATConv,
                                      build_state_graph, dgl_available, parse_config)
from onnxprune.search.gat_ppo.encoder import Edges
from onnxprune.search.gat_ppo.policy import build_blocks
from onnxprune.torchcopy import to_torch
from tests.tiny import digits_model

needs_dgl = pytest.mark.skipif(not dgl_available(), reason="DGL does not import here (bash scripts/dev.sh test-dgl)")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- encoder --------------------------------------------------------------------------------
#   0 --> 1 <-- 2      plus self-loops on 0, 1, 2
def test_torch_gatconv_matches_a_hand_computed_attention() -> None:
    conv = TorchGATConv(2, 2, num_heads=1)
    with torch.no_grad():
        conv.fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))  # Wh = (h0, 2 h1)
        conv.attn_l.copy_(torch.tensor([[[1.0, 0.0]]]))
        conv.attn_r.copy_(torch.tensor([[[0.0, 1.0]]]))
        conv.bias.copy_(torch.tensor([0.5, -0.5]))
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-2.0, 1.0]])
    edges = Edges.of(np.array([0, 1, 2, 0, 2]), np.array([0, 1, 2, 1, 1]), 3)
    out = conv(edges, h)  # (3, 1, 2)
    wh = np.array([[1.0, 0.0], [0.0, 2.0], [-2.0, 2.0]])
    el, er = wh[:, 0], wh[:, 1]

    def lrelu(v: float) -> float:
        return v if v > 0 else 0.2 * v

    e = np.array([lrelu(el[j] + er[1]) for j in (1, 0, 2)])  # into node 1 from 1, 0, 2
    alpha = np.exp(e) / np.exp(e).sum()
    node1 = alpha @ wh[[1, 0, 2]] + [0.5, -0.5]
    # nodes 0 and 2 only see themselves: attention 1
    expect = np.stack([wh[0] + [0.5, -0.5], node1, wh[2] + [0.5, -0.5]])
    assert out.shape == (3, 1, 2)
    np.testing.assert_allclose(out[:, 0].detach().numpy(), expect, rtol=1e-6, atol=1e-6)


@pytest.mark.dgl
@needs_dgl
def test_dgl_and_torch_backends_give_the_same_embeddings(tiny) -> None:
    _, analysis = tiny
    l1 = weight_scores(analysis, "l1")
    state = build_state_graph(analysis, l1, l1)
    edges = Edges.of(state.src, state.dst, state.num_nodes)
    torch.manual_seed(1)
    ref = GATEncoder(len(FEATURE_NAMES), 8, 3, 2, backend="dgl")
    with torch.no_grad():  # weights unlike any initialization, bias included
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    mine = GATEncoder(len(FEATURE_NAMES), 8, 3, 2, backend="torch")
    mine.load_state_dict(ref.state_dict())  # same names and shapes
    for ratios in (np.ones(state.num_nodes), np.linspace(0.2, 0.9, state.num_nodes)):
        x = torch.from_numpy(state.features(ratios=ratios.astype(np.float32)))
        a, b = ref(edges, x), mine(edges, x)
        assert a.shape == (state.num_nodes, 24)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # a random graph with several in-edges per node
    rng = np.random.default_rng(0)
    src, dst = rng.integers(0, 9, 40), rng.integers(0, 9, 40)
    src, dst = np.concatenate([src, np.arange(9)]), np.concatenate([dst, np.arange(9)])
    x = torch.randn(9, len(FEATURE_NAMES))
    g = Edges.of(src, dst, 9)
    torch.testing.assert_close(ref(g, x), mine(g, x), rtol=1e-5, atol=1e-6)


def test_dgl_backend_without_dgl_is_a_one_line_error() -> None:
    if dgl_available():
        pytest.skip("DGL imports here")
    from onnxprune.search.gat_ppo import resolve_backend

    with pytest.raises(InputError, match="dgl-env") as info:
        resolve_backend("dgl")
    assert "\n" not in str(info.value)
    assert resolve_backend("auto") == "torch"


# -- state graph and blocks -----------------------------------------------------------------
def test_state_graph_of_the_digits_model(tiny) -> None:
    _, analysis = tiny
    l1 = weight_scores(analysis, "l1")
    state = build_state_graph(analysis, l1, l1)
    # stem(16) -> stream(32) <-> branch(32); stream -> head(64)
    assert [analysis.channel_groups[g].units for g in state.group_ids] == [16, 32, 32, 64]
    assert state.edge_pairs(self_loops=False) == {(0, 1), (1, 2), (2, 1), (1, 3)}
    assert all((i, i) in state.edge_pairs() for i in range(4))
    x = state.features()
    assert x.dtype == np.float32 and x.shape == (4, len(FEATURE_NAMES))
    assert np.isfinite(x).all() and (x >= 0).all() and (x <= 1).all()
    keep = analysis.full_keep()
    g = analysis.channel_groups[state.group_ids[3]]
    keep[g.unit_start:g.unit_start + 16] = False
    ratio = state.features(keep)[:, FEATURE_NAMES.index("keep_ratio")]
    np.testing.assert_allclose(ratio, [1, 1, 1, 0.75])
    depth = x[:, FEATURE_NAMES.index("depth")]
    assert depth[0] < depth[2] < depth[3]
    share = x[:, FEATURE_NAMES.index("macs_share")]
    np.testing.assert_allclose(share, analysis.group_macs()[list(state.group_ids)] / analysis.macs, rtol=1e-6)


def test_blocks_drop_the_least_important_channels_first(tiny) -> None:
    _, analysis = tiny
    l1 = weight_scores(analysis, "l1")
    state = build_state_graph(analysis, l1, l1)
    scores = l1.copy()
    g0 = analysis.channel_groups[state.group_ids[0]]
    scores[g0.unit_start] = np.inf  # a frozen unit is always kept
    layout = build_blocks(state, scores, block=4, blocks_per_group=0)
    assert layout.counts.tolist() == [4, 8, 8, 16]
    for i, blocks in enumerate(layout.blocks):
        means = [scores[b][np.isfinite(scores[b])].mean() for b in blocks]
        assert means == sorted(means)  # block 0: least important
    actions = np.zeros((4, layout.max_blocks), dtype=bool)
    actions[1, :2] = True
    keep = layout.apply(analysis.full_keep(), actions)
    for i, blocks in enumerate(layout.blocks):
        if i != 1:  # all dropped: the most important block stays
            assert keep[blocks[-1]].all() and not any(keep[b].any() for b in blocks[:-1] if g0.unit_start not in b)
    assert keep[layout.blocks[1][0]].all() and not keep[layout.blocks[1][2]].any()
    assert keep[g0.unit_start]
    assert build_blocks(state, l1, block=0, blocks_per_group=3).counts.tolist() == [3, 3, 3, 3]


# -- reward ---------------------------------------------------------------------------------
def test_self_competition_reward_phases() -> None:
    r = SelfCompetitionReward(decay=0.5, penalty=10.0)
    small, large = r(0.01, None), r(0.2, None)
    assert small == pytest.approx(-1.1) and large == pytest.approx(-3.0) and large < small < -1
    assert r.ema is None  # infeasible samples do not touch the average
    assert r(0.0, 0.5) == 1.0 and r.ema == 0.5  # the first feasible sample starts it
    assert r(0.0, 0.75) == 1.0 and r.ema == 0.625  # beats 0.5, then 0.5 * 0.5 + 0.5 * 0.75
    assert r(0.0, 0.625) == -1.0 and r.ema == 0.625  # not above the average
    assert r(0.0, 0.375) == -1.0 and r.ema == 0.5
    assert r.feasible_seen == 4
    again = SelfCompetitionReward(0.5, 10.0)
    again.load(r.state())
    assert again.ema == r.ema and again(0.0, 0.5) == -1.0 and again(0.0, 0.625) == 1.0


# -- search ---------------------------------------------------------------------------------
OPTIONS = {"episodes": 40, "batch": 8, "gat_backend": "torch", "pretrain_steps": 50, "final_top": 2}


def _search(tiny: tuple[Any, Analysis], options: dict[str, Any], **cfg: Any) -> SearchResult:
    splits, analysis = tiny
    scfg = SearchConfig(budget=Budget("macs", 0.5), seed=3, eval=EvalConfig(images=150, bn_batches=2),
                        progress=False, options=options, **cfg)
    return run_search("gat-ppo", analysis, to_torch(analysis), splits, scfg)


@pytest.fixture(scope="module")
def searched(tiny, tmp_path_factory: pytest.TempPathFactory) -> SearchResult:
    return _search(tiny, OPTIONS, checkpoint=str(tmp_path_factory.mktemp("gp") / "full.ckpt"))


def test_search_is_feasible_and_beats_its_first_feasible_sample(tiny, searched: SearchResult) -> None:
    _, analysis = tiny
    assert searched.keep.dtype == bool and searched.keep.shape == analysis.full_keep().shape
    assert analysis.cost.macs(searched.keep) <= 0.5 * analysis.macs
    for g in analysis.channel_groups:
        assert searched.keep[g.unit_slice].any() and (g.prunable or searched.keep[g.unit_slice].all())
    records = searched.trajectory.records
    assert len(records) == 40 and {"reward", "feasible", "val_top1", "budget_ratio", "ema"} <= set(records[0])
    feasible = [r for r in records if r["feasible"]]
    assert feasible and all(r["budget_ratio"] <= 0.5 + 1e-9 and r["reward"] in (-1, 1) for r in feasible)
    assert all(r["reward"] < -1 and r["val_top1"] is None for r in records if not r["feasible"])
    assert max(r["val_top1"] for r in feasible) > feasible[0]["val_top1"]
    s = searched.summary
    assert s["gat_backend"] == "torch" and s["pretrain_loss"] is not None
    assert s["pretrain_loss"] < s["pretrain_loss_start"]
    # cheap evaluations of the feasible samples, then the finalists on the whole split: the best
    # `final_top` and the greedy mask, each also with the unused budget filled (`fill`)
    assert 0 < s["val_top1"] <= 1 and 1 <= s["evaluations"] <= len(feasible) + 2 * (OPTIONS["final_top"] + 1)
    assert len(searched.trajectory.meta["updates"]) == 5


def test_resume_continues_exactly(tiny, searched: SearchResult, tmp_path: Path) -> None:
    path = str(tmp_path / "search.ckpt")
    save = Checkpoint.save

    def interrupted(self: Checkpoint, state: dict) -> None:
        save(self, state)
        if self.saves == 3:  # after pre-training and two PPO updates
            raise KeyboardInterrupt

    with mock.patch.object(Checkpoint, "save", interrupted), pytest.raises(KeyboardInterrupt):
        _search(tiny, OPTIONS, checkpoint=path)
    resumed = _search(tiny, OPTIONS, checkpoint=path, resume=True)
    assert np.array_equal(resumed.keep, searched.keep)
    assert resumed.val_top1 == searched.val_top1
    assert resumed.trajectory.records == searched.trajectory.records
    assert resumed.trajectory.meta["updates"] == searched.trajectory.meta["updates"]


@pytest.mark.dgl
@needs_dgl
def test_short_search_with_the_dgl_backend(tiny) -> None:
    _, analysis = tiny
    one_batch = {**OPTIONS, "episodes": 8, "pretrain": False}
    result = _search(tiny, {**one_batch, "gat_backend": "dgl"})
    assert result.summary["gat_backend"] == "dgl"
    assert analysis.cost.macs(result.keep) <= 0.5 * analysis.macs
    # same initial weights and the same math: the same episodes as with the torch backend
    # (not after pre-training: Adam turns float-rounding differences of near-zero gradients
    # into full steps, so the two trainings drift apart slowly)
    same = _search(tiny, {**one_batch, "gat_backend": "torch"})
    keys = ("reward", "val_top1", "budget_ratio")
    assert [[r[k] for k in keys] for r in result.trajectory.records] == \
        [[r[k] for k in keys] for r in same.trajectory.records]


def test_steps_decide_slices_of_groups_with_the_state_updated(tiny) -> None:
    from onnxprune.search import BudgetMeter, LocalEvaluator, SearchContext
    from onnxprune.search.gat_ppo.search import _Search

    splits, analysis = tiny
    l1 = weight_scores(analysis, "l1")
    scfg = SearchConfig(budget=Budget("macs", 0.5), progress=False)
    ev = LocalEvaluator(analysis, to_torch(analysis), splits, EvalConfig(images=50, recalibrate_bn=False))
    ctx = SearchContext("gat-ppo", analysis, ev, BudgetMeter(analysis, scfg.budget), {"l1": l1, "taylor": l1}, scfg)
    search = _Search(ctx, parse_config({"steps": 2, "gat_backend": "torch", "prior": "0"}))
    keep, trans = search.rollout()
    assert len(trans) == 2 and [t.reward for t in trans] == [0.0, 0.0]
    first, second = trans[0].nodes.numpy(), trans[1].nodes.numpy()
    assert not (first & second).any() and (first | second).all()  # each group decided once
    col = FEATURE_NAMES.index("keep_ratio")
    assert (trans[0].x[:, col] == 1).all()
    decided = search.graph.keep_ratios(search.layout.apply(analysis.full_keep(), trans[0].actions.numpy() > 0.5,
                                                           np.flatnonzero(first)))
    np.testing.assert_allclose(trans[1].x[:, col].numpy(), decided)
    assert (trans[1].x[first, col] < 1).any() and (trans[1].x[second, col] == 1).all()
    ev.close()


# -- options --------------------------------------------------------------------------------
@pytest.mark.parametrize("options, needle", [
    ({"episodes": "0"}, "episodes must be >= 1"),
    ({"block": "4", "blocks_per_group": "2"}, "not both"),
    ({"gat_backend": "jax"}, "--gat-backend"),
    ({"preset": "huge"}, "unknown preset"),
    ({"nope": "1"}, "unknown option 'nope'"),
])
def test_bad_options_are_input_errors(options: dict[str, str], needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        parse_config(options)
    assert parse_config({"preset": "paper"}).episodes == 2000


@pytest.mark.parametrize("flags, needle", [
    (["--gat-backend", "jax"], "--gat-backend"),
    (["--option", "ema=1.5"], "ema must be in (0, 1)"),
])
def test_bad_options_through_the_cli(tiny, tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str],
                                     needle: str) -> None:
    model = tmp_path / "tiny.onnx"
    onnx.save(digits_model()[1], str(model))
    code = main(["prune", str(model), "-o", str(tmp_path / "out.onnx"), "--method", "gat-ppo", "--target-flops",
                 "0.5", "--data", "digits", "--eval-images", "50", *flags])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and ln.startswith("onnxprune:")]
    assert code == 2
    assert len(err) == 1 and needle in err[0]
    assert not (tmp_path / "out.onnx").exists()
