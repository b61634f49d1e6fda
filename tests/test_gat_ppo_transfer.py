"""gat-ppo transfer across graphs (issue 14, item 5): a policy pre-trained on one graph loads and
searches another graph with a different number of groups, and `python -m
benchmarks.gat_ppo_transfer --tiny` runs end to end (both pre-training schedules, the four arms,
the summary, the plot and the report section) and resumes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch

from benchmarks import gat_ppo_transfer
from onnxprune.deps import analyze
from onnxprune.search import Budget, EvalConfig, SearchConfig, SearchContext, run_search
from onnxprune.search.budget import BudgetMeter
from onnxprune.search.gat_ppo.search import _Search, parse_config
from onnxprune.torchcopy import to_torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")
OPTIONS = {"batch": 8, "gat_backend": "torch", "pretrain_steps": 10, "final_top": 2}


def _search(splits: Any, analysis: Any, options: dict[str, Any]) -> Any:
    cfg = SearchConfig(budget=Budget("macs", 0.5), seed=1, eval=EvalConfig(images=150, bn_batches=2), progress=False,
                       options=options)
    return run_search("gat-ppo", analysis, to_torch(analysis), splits, cfg)


def test_a_policy_trained_on_one_graph_searches_another(tiny, tmp_path: Path) -> None:
    splits, analysis = tiny
    path = tmp_path / "policy.npz"
    _search(splits, analysis, {**OPTIONS, "episodes": 16, "policy_out": str(path)})
    other_path, _ = gat_ppo_transfer.digits_net("plain5", 1, tmp_path)
    other = analyze(other_path)
    assert len(other.prunable()) != len(analysis.prunable())  # 5 groups against 4
    # the other graph's policy starts from the file's weights, not from its own initialization
    with np.load(path) as saved:
        arrays = {k: saved[k] for k in saved.files if k != "__meta__"}
    cfg = SearchConfig(budget=Budget("macs", 0.5), seed=1, progress=False)
    from onnxprune.criteria import weight_scores

    l1 = weight_scores(other, "l1")
    ctx = SearchContext("gat-ppo", other, None, BudgetMeter(other, cfg.budget), {"l1": l1, "taylor": l1}, cfg)
    loaded = _Search(ctx, parse_config({**OPTIONS, "policy": str(path)}), None)
    fresh = _Search(ctx, parse_config(OPTIONS), None)
    assert loaded.graph.num_nodes == 5 and loaded.policy.prior.shape[0] == 5
    for key, value in loaded.policy.weights().items():
        assert np.array_equal(value.numpy(), arrays[key]), key
    assert any(not torch.equal(v, fresh.policy.weights()[k]) for k, v in loaded.policy.weights().items())
    # and it searches there: the encoder is not pre-trained again, every candidate meets the budget
    result = _search(splits, other, {**OPTIONS, "episodes": 16, "policy": str(path)})
    assert result.summary["pretrain_loss"] is None and result.summary["learner"] == "ppo"
    assert other.cost.macs(result.keep) <= 0.5 * other.macs
    assert all(r["feasible"] and r["proxy"] is not None for r in result.trajectory.records)


def test_the_transfer_benchmark_runs_end_to_end_on_its_tiny_setting(tmp_path: Path) -> None:
    argv = ["gat_ppo_transfer", "--tiny", "--out-dir", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"),
            "--arms", "scratch", "pretrained", "prior", "joint"]
    with mock.patch.object(sys, "argv", argv):
        gat_ppo_transfer.main()
    out = tmp_path / "out" / "transfer__plain5-digits-e3.json"
    data = json.loads(out.read_text())
    assert {r["arm"] for r in data["runs"]} == {"scratch", "pretrained", "prior", "joint"}
    by = {r["arm"]: r for r in data["runs"]}
    # with one pre-training task the joint schedule is the sequential one: the joint loss is PPO's
    assert data["pretrain_joint"]["tasks"][0]["curve"] == data["pretrain"]["stages"][0]["curve"]
    assert by["joint"]["proxies"] == by["pretrained"]["proxies"]
    # equal evaluations: the controls spend the sensitivity measurement as candidates
    assert by["scratch"]["candidates"] + by["scratch"]["setup_evaluations"] == by["prior"]["candidates"]
    assert by["scratch"]["pretrain_loss"] is not None and by["pretrained"]["pretrain_loss"] is None
    assert data["pretrain"]["stages"] and data["pretrain"]["graphs"]["resnet_tiny"]["test_top1"] > 0.5
    assert all(len(r["curve"]) == 2 for r in data["runs"] if r["arm"] != "prior")
    diff = data["summary"]["0.5"]["pretrained_minus_scratch"]["best_proxy"]
    assert diff["n"] == 1 and diff["se"] is None and not diff["above_2se"]
    assert out.with_suffix(".png").stat().st_size > 0
    text = "\n".join(gat_ppo_transfer.section(out))
    assert "| 0.5 | pretrained | 1 |" in text and "| 0.5 | joint - scratch (n=1) |" in text
    # resumable: a second run finds every arm done and changes no run
    with mock.patch.object(sys, "argv", argv):
        gat_ppo_transfer.main()
    assert json.loads(out.read_text())["runs"] == data["runs"]
