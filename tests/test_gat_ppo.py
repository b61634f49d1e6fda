"""gat-ppo: the GAT backends agree; the state graph carries information and changes within an
episode; every candidate meets the budget; on a planted problem the policy learns (its mean
sample proxy rises) and finds the optimum where its prior alone does not; the controls spend the
same evaluations; the search resumes exactly; bad options are one-line errors.

Tests marked `dgl` need DGL (`bash scripts/dev.sh test-dgl` runs them in .venv-dgl/); elsewhere
they skip.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Sequence
from unittest import mock

import numpy as np
import onnx
import pytest
import torch

from onnxprune.api import search_callables
from onnxprune.cli import main
from onnxprune.criteria import weight_scores
from onnxprune.deps import Analysis
from onnxprune.errors import InputError
from onnxprune.search import Budget, BudgetMeter, EvalConfig, SearchConfig, SearchContext, SearchResult, run_search
from onnxprune.search.base import Checkpoint
from onnxprune.search.gat_ppo import (FEATURE_NAMES, GATEncoder, SelfCompetitionReward, TorchGATConv,
                                      build_state_graph, dgl_available, parse_config)
from onnxprune.search.gat_ppo import run as gat_ppo_run
from onnxprune.search.gat_ppo.encoder import Edges
from onnxprune.search.gat_ppo.env import Episode, Projector, block_space, kept_count, level_space
from onnxprune.search.gat_ppo.policy import ActorCritic, level_centres, prior_levels
from onnxprune.search.gat_ppo.search import _Search
from onnxprune.search.rounding import is_rounded, width_multiples
from onnxprune.torchcopy import to_torch
from onnxprune.torchcopy.masked import batched_logits
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
        x = torch.from_numpy(state.features(kept=ratios.astype(np.float32)))
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


# -- state graph, action spaces, projection -------------------------------------------------
def test_state_graph_of_the_digits_model(tiny) -> None:
    _, analysis = tiny
    l1 = weight_scores(analysis, "l1")
    state = build_state_graph(analysis, l1, l1, sensitivity=np.array([0.1, 0.4, 0.0, 0.2]), impact=l1 * 3.0)
    # stem(16) -> stream(32) <-> branch(32); stream -> head(64)
    assert [analysis.channel_groups[g].units for g in state.group_ids] == [16, 32, 32, 64]
    assert state.edge_pairs(self_loops=False) == {(0, 1), (1, 2), (2, 1), (1, 3)}
    assert all((i, i) in state.edge_pairs() for i in range(4))
    x = state.features()
    assert x.dtype == np.float32 and x.shape == (4, len(FEATURE_NAMES))
    assert np.isfinite(x).all() and (x >= 0).all() and (x <= 1).all()
    col = {name: x[:, FEATURE_NAMES.index(name)] for name in FEATURE_NAMES}
    assert col["depth"][0] < col["depth"][2] < col["depth"][3]
    np.testing.assert_allclose(col["macs_share"], analysis.group_macs()[list(state.group_ids)] / analysis.macs,
                               rtol=1e-6)
    np.testing.assert_allclose(col["sensitivity"], [0.25, 1.0, 0.0, 0.5])
    # every static feature but the op kinds / kernel / groups (one kind of layer here) tells groups apart
    for name in ("log_channels", "macs_share", "params_share", "macs_per_channel", "depth", "sensitivity",
                 "impact_per_cost", "l1_spread"):
        assert np.ptp(col[name]) > 0.01, name
    assert col["macs_per_channel"].max() == pytest.approx(1.0)
    # without measurements the two measured features are zero, not a constant that looks informative
    bare = build_state_graph(analysis, l1, l1).features()
    for name in ("sensitivity", "impact_per_cost"):
        assert (bare[:, FEATURE_NAMES.index(name)] == 0).all()


def test_kept_counts_respect_rounding_and_the_floor() -> None:
    assert kept_count(64, 0.5) == 32 and kept_count(64, 0.51) == 33
    assert kept_count(64, 0.51, round_to=8) == 40 and kept_count(64, 1.0, round_to=8) == 64
    assert kept_count(6, 0.5, round_to=8) == 3  # narrower than round_to: not rounded
    assert kept_count(100, 0.0) == 5 and kept_count(10, 0.0) == 1  # at least 5% and one unit


def _meter(analysis: Analysis, target: float = 0.5) -> BudgetMeter:
    return BudgetMeter(analysis, Budget("macs", target))


def test_projection_is_exact_and_keeps_the_most_important_channels(tiny) -> None:
    _, analysis = tiny
    l1 = weight_scores(analysis, "l1")
    state = build_state_graph(analysis, l1, l1)
    meter = _meter(analysis)
    proj = Projector(analysis, meter, state, l1, [4] * state.num_nodes)
    rng = np.random.default_rng(0)
    for _ in range(20):
        ratios = rng.uniform(0.2, 1.0, state.num_nodes)
        keep, scale = proj.project(ratios)
        assert meter.feasible(keep)
        # exact: a slightly larger factor is over budget (unless everything is kept)
        wider = proj.mask(np.minimum((scale * 1.02 + 1e-3) * ratios, 1.0))
        assert not meter.feasible(wider) or wider.all()
        for i, (s, n) in enumerate(zip(state.unit_starts, state.units)):
            local, scores = keep[s:s + n], l1[s:s + n]
            k = int(local.sum())
            assert k % 4 == 0 or k == n  # rounded to 4
            assert scores[local].min() >= np.sort(scores)[::-1][k - 1]  # the k most important


@pytest.mark.parametrize("rule", ["auto", "1-8-8-8"])
@pytest.mark.parametrize("target", [0.25, 0.5, 0.7])
def test_projection_under_runtime_multiples_lands_on_the_budget(tiny, target: float, rule: str) -> None:
    """Runtime widths (today's `--round-to auto` on the CPU, and the earlier rule: stem 16 in steps
    of 1, the 32- and 64-unit groups in steps of 8): every projected candidate keeps multiples and
    lands within the rounding's 2% under the budget, also where blocks alone cannot get there (a
    coarse group grows while a fine one gives units back; under the earlier rule these ratios used
    to land at 0.43 for a 0.5 target)."""
    _, analysis = tiny
    l1 = weight_scores(analysis, "l1")
    state = build_state_graph(analysis, l1, l1)
    if rule == "auto":
        multiples = width_multiples(analysis, "auto")
    else:
        multiples = dict(zip(state.group_ids, map(int, rule.split("-"))))
    meter = _meter(analysis, target)
    proj = Projector(analysis, meter, state, l1, [multiples[g] for g in state.group_ids])
    rng = np.random.default_rng(0)
    tries = [np.array([0.9, 0.3, 0.7, 0.8]), np.array([1.0, 0.2, 0.7, 0.7])] + \
        [rng.choice(np.linspace(0.2, 1.0, 9), 4) for _ in range(60)]
    # the widest rounded allocation within budget (every combination of widths: 32 or 64 here);
    # under today's coarser rule nothing lies within 2% under 0.7 (the best is 0.674)
    groups = analysis.prunable()
    reachable = 0.0
    for counts in itertools.product(*[sorted({*range(multiples[g.id], g.units + 1, multiples[g.id]), g.units})
                                      for g in groups]):
        keep = analysis.full_keep().copy()
        for g, k in zip(groups, counts):
            keep[g.unit_slice] = False
            keep[g.unit_start:g.unit_start + k] = True
        if meter.feasible(keep):
            reachable = max(reachable, meter.ratio(keep))
    assert rule == "auto" or reachable >= target - 0.02
    for ratios in tries:
        keep, _ = proj.project(ratios)
        assert is_rounded(analysis, keep, multiples)
        assert min(target - 0.02, reachable) <= meter.ratio(keep) <= target + 1e-12, ratios


def test_blocks_drop_the_least_important_channels_first(tiny) -> None:
    _, analysis = tiny
    l1 = weight_scores(analysis, "l1")
    state = build_state_graph(analysis, l1, l1)
    scores = l1.copy()
    g0 = analysis.channel_groups[state.group_ids[0]]
    scores[g0.unit_start] = np.inf  # a frozen unit is always kept
    space = block_space(state, scores, block=4, blocks_per_group=0)
    assert [len(b) for b in space.blocks] == [4, 8, 8, 16]
    for blocks in space.blocks:
        means = [scores[b].mean() for b in blocks]
        assert means == sorted(means)  # block 0: least important
    ep = Episode(state, space, Projector(analysis, _meter(analysis), state, scores), [np.arange(4)], 0.5)
    actions = np.zeros((4, space.width), dtype=np.float32)
    actions[1, :2] = 1
    ep.apply(actions)
    for i, blocks in enumerate(space.blocks):
        if i != 1:  # all dropped: the most important block stays
            assert ep.keep[blocks[-1]].all() and not any(ep.keep[b].any() for b in blocks[:-1])
    assert ep.keep[space.blocks[1][0]].all() and not ep.keep[space.blocks[1][2]].any()
    assert ep.keep[g0.unit_start]
    assert [len(b) for b in block_space(state, l1, block=0, blocks_per_group=3).blocks] == [3, 3, 3, 3]


def test_the_ordinal_head_moves_the_priors_peak_along_the_levels(tiny) -> None:
    """At its start the ordinal head gives the prior's logits; its shift output moves a node's
    peak by that many levels (the categorical head would need one logit per level to do so)."""
    _, analysis = tiny
    graph = build_state_graph(analysis, weight_scores(analysis, "l1"), weight_scores(analysis, "l1"))
    space = level_space(9, 0.2)
    reference = np.array([0.6, 0.7, 0.8, 1.0])
    prior = prior_levels(space.fractions, reference, 2.0)
    valid = space.valid(graph.num_nodes)
    edges = Edges.of(graph.src, graph.dst, graph.num_nodes, torch.device("cpu"))
    x = torch.from_numpy(graph.features())[None]
    torch.manual_seed(0)
    head = ActorCritic(len(FEATURE_NAMES), 16, 4, 2, "torch", "levels", prior, valid,
                       level_centres(space.fractions, reference), 2.0)
    assert head.ordinal and head.actor[2].out_features == 10
    logits, _ = head(edges, x)
    assert torch.allclose(logits[0], torch.as_tensor(prior), atol=0.05)
    assert logits[0].argmax(-1).tolist() == [4, 5, 6, 8]  # the reference levels
    with torch.no_grad():
        head.actor[2].bias[-1] = -3.0  # every peak three levels thinner (the top one from 8 to 5)
    assert head(edges, x)[0][0].argmax(-1).tolist() == [1, 2, 3, 5]
    flat = ActorCritic(len(FEATURE_NAMES), 16, 4, 2, "torch", "levels", prior, valid)  # categorical
    assert not flat.ordinal and flat.actor[2].out_features == 9


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


# -- planted problem ------------------------------------------------------------------------
class PlantedEvaluator:
    """A proxy with a planted answer on the digits model's four groups (stem 16, stream 32,
    branch 32, head 64): thinning the stream costs everything, thinning the branch costs
    nothing, stem and head cost a little. Under a 50% MACs budget the optimum keeps the stream
    whole and thins the branch to the floor (proxy 0.9); a uniform allocation scores about 0.6."""

    def __init__(self, analysis: Analysis) -> None:
        self.groups = analysis.prunable()
        self.evaluations, self.seconds = 0, 0.0

    def value(self, keep: np.ndarray) -> float:
        r = [float(keep[g.unit_slice].mean()) for g in self.groups]
        return 0.9 - 0.8 * (1 - r[1]) - 0.1 * ((1 - r[0]) + (1 - r[3]))

    def evaluate(self, keeps: Sequence[np.ndarray], images: int | None = None) -> list[float]:
        self.evaluations += len(keeps)
        return [self.value(k) for k in keeps]

    def close(self) -> None:
        pass


PLANTED = {"episodes": 192, "batch": 16, "gat_backend": "torch", "pretrain": False, "sensitivity": False,
           "prior": 2.0}


def _planted(tiny, **options: Any) -> tuple[SearchResult, PlantedEvaluator]:
    _, analysis = tiny
    l1 = weight_scores(analysis, "l1")
    # round_to=1: the planted problem measures the learner on exact widths (auto rounding would
    # merge most of the 9 levels of these 16-64-channel groups into the same width)
    cfg = SearchConfig(budget=Budget("macs", 0.5), seed=0, progress=False, round_to=1,
                       options={**PLANTED, **options})
    ev = PlantedEvaluator(analysis)
    ctx = SearchContext("gat-ppo", analysis, ev, BudgetMeter(analysis, cfg.budget), {"l1": l1, "taylor": l1}, cfg)
    return gat_ppo_run(ctx), ev


@pytest.fixture(scope="module")
def planted(tiny) -> dict[str, tuple[SearchResult, PlantedEvaluator]]:
    return {learner: _planted(tiny, learner=learner) for learner in ("ppo", "prior")}


def test_the_policy_learns_the_planted_answer_and_its_prior_alone_does_not(tiny, planted) -> None:
    _, analysis = tiny
    ppo, _ = planted["ppo"]
    prior, _ = planted["prior"]
    curve = [u["mean_proxy"] for u in ppo.trajectory.meta["updates"]]
    assert len(curve) == 12
    # the mean sample proxy rises across updates (the prior alone stays where it starts)
    assert np.mean(curve[-3:]) > np.mean(curve[:3]) + 0.1
    flat = [u["mean_proxy"] for u in prior.trajectory.meta["updates"]]
    assert abs(np.mean(flat[-3:]) - np.mean(flat[:3])) < 0.05
    # the planted answer: the stream kept whole, the budget taken from the branch (the optimum,
    # 0.9, also keeps stem and head whole; PPO gets within about 0.05 of it)
    groups = analysis.prunable()
    ratios = [float(ppo.keep[g.unit_slice].mean()) for g in groups]
    assert ratios[1] == 1.0 and ratios[2] < 0.4 and ppo.val_top1 > 0.85
    # the best of as many samples from the prior alone misses it
    assert float(prior.keep[groups[1].unit_slice].mean()) < 1.0
    assert ppo.val_top1 > prior.val_top1 + 0.1
    assert len(ppo.trajectory.records) == len(prior.trajectory.records) == 192


def test_state_changes_within_an_episode(tiny, planted) -> None:
    _, analysis = tiny
    ev = PlantedEvaluator(analysis)
    l1 = weight_scores(analysis, "l1")
    # exact widths (round_to=1): under auto rounding a decided level can round back up to the whole group
    # (0.8 of 16 channels kept 16), so the MACs used would not follow every decision
    scfg = SearchConfig(budget=Budget("macs", 0.5), progress=False, round_to=1)
    ctx = SearchContext("gat-ppo", analysis, ev, BudgetMeter(analysis, scfg.budget), {"l1": l1, "taylor": l1}, scfg)
    search = _Search(ctx, parse_config({"gat_backend": "torch", "pretrain": False}), None)
    col = {name: FEATURE_NAMES.index(name) for name in ("kept", "decided", "current", "macs_used", "progress")}
    for _ in range(20):  # an episode that thins a group before its last decision (a sample may keep
        keep, _, trans, ep = search.rollout()  # the first three whole, which would leave nothing to check)
        if any((tr.x[tr.x[:, col["decided"]] > 0, col["kept"]] < 1).any() for tr in trans):
            break
    assert len(trans) == 4  # one group per step, by depth
    for t, tr in enumerate(trans):
        assert tr.nodes.sum() == 1 and tr.x[tr.nodes, col["current"]].item() == 1.0
        assert tr.x[:, col["decided"]].sum() == t  # the groups decided so far
        assert tr.x[0, col["progress"]] == pytest.approx(t / 4)
    for a, b in zip(trans, trans[1:]):
        assert not np.array_equal(a.x, b.x)  # the state changes after every decision
    # decided widths appear in the next state, and the MACs used follow them
    decided = trans[1].x[:, col["decided"]] > 0
    assert (trans[-1].x[decided, col["kept"]] <= 1).all()
    used = [tr.x[0, col["macs_used"]] for tr in trans]
    assert used[0] == 1.0
    for tr, u in zip(trans, used):  # below 1 exactly when a decided group was thinned
        thinned = (tr.x[tr.x[:, col["decided"]] > 0, col["kept"]] < 1).any()
        assert (u < 1.0) == thinned
    assert min(used) < 1.0
    # the policy's input changes, so its output does too
    logits = [search.policy(search.edges, torch.from_numpy(tr.x)[None])[0] for tr in trans]
    assert not torch.allclose(logits[0], logits[-1])
    assert search.ctx.meter.feasible(keep)


# -- a real search on the digits model ------------------------------------------------------
OPTIONS = {"episodes": 32, "batch": 8, "gat_backend": "torch", "pretrain_steps": 30, "final_top": 2}
TRAJECTORY_FIELDS = {"update", "episode", "learner", "proxy", "reward", "macs", "params", "latency", "feasible",
                     "budget_ratio", "scale", "repeat", "ratios"}


def _search(tiny: tuple[Any, Analysis], options: dict[str, Any], **cfg: Any) -> SearchResult:
    """A search at `--round-to auto` (the default) unless `cfg` says otherwise."""
    splits, analysis = tiny
    scfg = SearchConfig(budget=Budget("macs", 0.5), seed=3, eval=EvalConfig(images=150, bn_batches=2),
                        progress=False, options=options, **cfg)
    return run_search("gat-ppo", analysis, to_torch(analysis), splits, scfg)


@pytest.fixture(scope="module")
def searched(tiny, tmp_path_factory: pytest.TempPathFactory) -> SearchResult:
    return _search(tiny, OPTIONS, checkpoint=str(tmp_path_factory.mktemp("gp") / "full.ckpt"))


@pytest.mark.parametrize("options", [
    {"learner": "random"}, {"learner": "cem"}, {"learner": "prior"},
    {"action": "blocks", "block": 4}, {"action": "blocks", "steps": 1, "reward": "self-competition"},
    {"reward": "amc", "round_to": 1}, {"action": "blocks", "block": 4, "round_to": 1},
])
def test_every_candidate_meets_the_budget(tiny, searched: SearchResult, options: dict[str, Any]) -> None:
    _, analysis = tiny
    options = dict(options)
    round_to = options.pop("round_to", "auto")
    results = [searched, _search(tiny, {**OPTIONS, **options, "pretrain": False}, round_to=round_to)]
    for result in results:
        assert analysis.cost.macs(result.keep) <= 0.5 * analysis.macs
        records = result.trajectory.records
        assert records and all(TRAJECTORY_FIELDS <= set(r) for r in records)
        assert all(r["feasible"] and r["macs"] <= 0.5 + 1e-9 and 0.0 < r["proxy"] <= 1.0 for r in records)
        # projected onto the budget (within the 2% the rounding allows), not far below it; at
        # exact widths the scale factor alone projects (a unit of the 32-wide stream is 3% of the MACs)
        floor = 0.48 if result is searched or round_to == "auto" else 0.4
        assert all(r["macs"] >= floor for r in records)
        assert [r["update"] for r in records] == sorted(r["update"] for r in records)
    # the controls spend the sensitivity measurement's evaluations as candidates
    assert len(results[1].trajectory.records) == OPTIONS["episodes"] + (5 if options.get("learner") else 0)


def test_search_on_the_digits_model(tiny, searched: SearchResult) -> None:
    _, analysis = tiny
    assert searched.keep.dtype == bool and searched.keep.shape == analysis.full_keep().shape
    for g in analysis.channel_groups:
        assert searched.keep[g.unit_slice].any() and (g.prunable or searched.keep[g.unit_slice].all())
    s, meta = searched.summary, searched.trajectory.meta
    assert s["gat_backend"] == "torch" and s["pretrain_loss"] < s["pretrain_loss_start"]
    assert s["setup_evaluations"] == 5 and len(meta["sensitivity"]) == 4
    assert max(meta["sensitivity"]) > 0  # thinning some group alone costs accuracy
    assert len(meta["updates"]) == 4 and meta["steps"] == 4
    # the winner is the best finalist on the whole validation split, returned as scored: the
    # candidates already have the widths of --round-to auto, so nothing is rounded afterwards
    assert s["val_top1"] == max(f["val_top1"] for f in meta["finalists"])
    assert "rounded" not in s and "+" not in s["picked"]
    multiples = width_multiples(analysis, "auto")
    assert is_rounded(analysis, searched.keep, multiples)
    groups = {g.id: g for g in analysis.prunable()}
    for r in searched.trajectory.records:  # every candidate's widths are multiples
        counts = [round(ratio * groups[gid].units) for ratio, gid in zip(r["ratios"], meta["group_ids"])]
        assert all(k == groups[gid].units or k % multiples[gid] == 0 for k, gid in zip(counts, meta["group_ids"]))
    assert s["evaluations"] <= 5 + 32 + len(meta["finalists"])
    # the label says which kind of candidate won (issue 18: a filled greedy winner was "sampled"):
    # a sampled episode by number, or the policy's greedy candidate; the framework appends +marks
    picked = s["picked"].split("+")[0]
    assert picked in {f["from"] for f in meta["finalists"] if f["val_top1"] == s["val_top1"]}
    # the greedy candidate is always scored: as "greedy", or as the episode whose mask it equals
    # (coarse --round-to auto widths make that common on the tiny model)
    assert meta["greedy_is"] in {f["from"] for f in meta["finalists"]}
    episodes = {r["episode"] for r in searched.trajectory.records}
    assert picked == "greedy" or (picked.startswith("episode ") and int(picked.split()[1]) in episodes)


def _distinct(records: list[dict[str, Any]]) -> int:
    return len({tuple(r["ratios"]) for r in records})


@pytest.mark.parametrize("learner", ["ppo", "random"])
def test_count_distinct_spends_the_budget_on_distinct_candidates(tiny, learner: str) -> None:
    options = {**OPTIONS, "learner": learner, "pretrain": False}
    budget = OPTIONS["episodes"] + (5 if learner != "ppo" else 0)  # controls get the sensitivity's evaluations
    # by default repeats count as episodes (the evaluator does not re-run them) ...
    default = _search(tiny, options, round_to=1)
    records = default.trajectory.records
    assert len(records) == budget and default.summary["count"] == "episodes"
    assert sum(not r["repeat"] for r in records) == _distinct(records) == default.summary["distinct_candidates"]
    # ... with count=distinct the search samples until `episodes` distinct candidates are scored
    # (at most max_factor = 4 times as many samples), never more
    result = _search(tiny, {**options, "count": "distinct"}, round_to=1)
    records, s = result.trajectory.records, result.summary
    assert s["count"] == "distinct" and s["distinct_candidates"] == _distinct(records)
    assert sum(not r["repeat"] for r in records) == s["distinct_candidates"] <= budget
    assert s["distinct_candidates"] == budget or len(records) == 4 * budget
    if learner == "ppo":  # PPO repeats itself, so it samples more to score more distinct candidates
        assert _distinct(default.trajectory.records) < s["distinct_candidates"] and len(records) > budget
    assert s["evaluations"] <= (5 if learner == "ppo" else 0) + budget + len(result.trajectory.meta["finalists"])


def test_finalist_images_picks_the_best_finalist_after_a_brief_distillation(tiny) -> None:
    splits, analysis = tiny
    scfg = SearchConfig(budget=Budget("macs", 0.5), seed=3, eval=EvalConfig(images=150, bn_batches=2),
                        progress=False, round_to=1,
                        options={**OPTIONS, "pretrain": False, "final_top": 3, "finalist_images": 256})
    import onnxprune.torchcopy as torchcopy

    real_finetune, x = torchcopy.finetune, splits.val[0][:64]
    expected = batched_logits(to_torch(analysis), x)
    teachers: list[float] = []

    def finetune(model: Any, teacher: Any, *args: Any, **kwargs: Any) -> Any:
        # the teacher is the original, not the copy the evaluator masks in place during the search
        teachers.append(float((batched_logits(teacher, x) - expected).abs().max()))
        return real_finetune(model, teacher, *args, **kwargs)

    with mock.patch.object(torchcopy, "finetune", finetune):
        result = run_search("gat-ppo", analysis, to_torch(analysis), splits, scfg, **search_callables(analysis, splits))
    finalists, s = result.trajectory.meta["finalists"], result.summary
    assert len(teachers) == len(finalists) and max(teachers) < 1e-4
    tuned = [f["finetuned_val_top1"] for f in finalists]
    assert len(finalists) >= 2 and s["finalist_images"] == 256
    assert s["picked"] == finalists[int(np.argmax(tuned))]["from"] and s["picked_finetuned_val_top1"] == max(tuned)
    # the distillation ran: it changes what the masked copy scored (BatchNorm re-estimated both times)
    assert any(abs(f["finetuned_val_top1"] - f["val_top1"]) > 1e-9 for f in finalists)
    assert analysis.cost.macs(result.keep) <= 0.5 * analysis.macs
    off = _search(tiny, {**OPTIONS, "pretrain": False, "final_top": 3}, round_to=1)
    assert off.summary["picked_finetuned_val_top1"] is None
    assert all("finetuned_val_top1" not in f for f in off.trajectory.meta["finalists"])


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


def test_a_checkpoint_of_another_policy_head_is_a_one_line_error(tiny) -> None:
    _, analysis = tiny
    l1 = weight_scores(analysis, "l1")
    scfg = SearchConfig(budget=Budget("macs", 0.5), progress=False)

    def search(head: str) -> _Search:
        ctx = SearchContext("gat-ppo", analysis, PlantedEvaluator(analysis), BudgetMeter(analysis, scfg.budget),
                            {"l1": l1, "taylor": l1}, scfg)
        return _Search(ctx, parse_config({"gat_backend": "torch", "head": head}), None)

    old = search("categorical").state()  # as a checkpoint written before the ordinal head holds it
    with pytest.raises(InputError, match="written by another version"):
        search("ordinal").load(old)


def test_a_saved_policy_loads_and_a_mismatched_one_is_refused(tiny, tmp_path: Path) -> None:
    path = tmp_path / "policy.npz"
    first = _search(tiny, {**OPTIONS, "episodes": 8, "pretrain": False, "sensitivity": False,
                           "policy_out": str(path)})
    assert path.exists() and first.summary["learner"] == "ppo"
    again = _search(tiny, {**OPTIONS, "episodes": 8, "sensitivity": False, "policy": str(path)})
    assert again.summary["pretrain_loss"] is None  # a loaded policy is not pre-trained again
    with pytest.raises(InputError, match="hidden=16"):
        _search(tiny, {**OPTIONS, "episodes": 8, "sensitivity": False, "policy": str(path), "hidden": 8})
    with pytest.raises(InputError, match="head='ordinal'"):  # the default head cannot load a categorical policy
        _search(tiny, {**OPTIONS, "episodes": 8, "sensitivity": False, "policy": str(path), "head": "categorical"})
    with pytest.raises(InputError, match="not a gat-ppo policy"):
        bad = tmp_path / "bad.npz"
        bad.write_bytes(b"nope")
        _search(tiny, {**OPTIONS, "episodes": 8, "sensitivity": False, "policy": str(bad)})


@pytest.mark.dgl
@needs_dgl
def test_short_search_with_the_dgl_backend(tiny) -> None:
    _, analysis = tiny
    one_batch = {**OPTIONS, "episodes": 8, "pretrain": False}
    result = _search(tiny, {**one_batch, "gat_backend": "dgl"})
    assert result.summary["gat_backend"] == "dgl"
    assert analysis.cost.macs(result.keep) <= 0.5 * analysis.macs
    # same initial weights and the same math: the same episodes as with the torch backend
    same = _search(tiny, {**one_batch, "gat_backend": "torch"})
    keys = ("proxy", "ratios", "budget_ratio")
    assert [[r[k] for k in keys] for r in result.trajectory.records] == \
        [[r[k] for k in keys] for r in same.trajectory.records]


# -- options --------------------------------------------------------------------------------
@pytest.mark.parametrize("options, needle", [
    ({"episodes": "0"}, "episodes must be >= 1"),
    ({"block": "4", "blocks_per_group": "2"}, "not both"),
    ({"gat_backend": "jax"}, "--gat-backend"),
    ({"preset": "huge"}, "unknown preset"),
    ({"nope": "1"}, "unknown option 'nope'"),
    ({"learner": "sgd"}, "learner must be one of"),
    ({"project": "false"}, "project=false needs action=blocks"),
    ({"levels": "1"}, "levels must be >= 2"),
    ({"count": "evaluations"}, "count must be one of episodes, distinct"),
    ({"max_factor": "0"}, "max_factor must be >= 1"),
    ({"finalist_images": "-1"}, "finalist_images must be >= 0"),
    ({"head": "gaussian"}, "head must be one of ordinal, categorical"),
])
def test_bad_options_are_input_errors(options: dict[str, str], needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        parse_config(options)
    assert parse_config({"preset": "paper"}).episodes == 2000
    seed = parse_config({"preset": "seed"})
    assert (seed.action, seed.steps, seed.reward, seed.project) == ("blocks", 1, "self-competition", False)


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


def test_the_plot_shows_the_learning_curve(searched: SearchResult, tmp_path: Path) -> None:
    from onnxprune.search.plot import plot_trajectory

    png = tmp_path / "curve.png"
    plot_trajectory(searched.trajectory.to_json(), png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
