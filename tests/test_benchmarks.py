"""The benchmark report's statistics and its list of missing runs (no model is run)."""

from __future__ import annotations

import math
import os

import pytest

from benchmarks import report, run


def _rec(seed: int, top1: float, method: str = "l1-uniform") -> dict:
    return {"model": "resnet20", "form": "folded", "target": "macs-0.5", "method": method, "seed": seed,
            "test_top1": top1}


def test_mean_se_uses_the_standard_error() -> None:
    m, se, n = report.mean_se([0.9, 0.92, 0.94, None, float("nan")])
    assert n == 3 and m == pytest.approx(0.92)
    assert se == pytest.approx(0.02 / math.sqrt(3))  # sample std 0.02
    assert math.isnan(report.mean_se([0.5])[1])
    assert report.mean_se([])[2] == 0


def test_paired_diff_pairs_by_seed() -> None:
    a = [_rec(0, 0.90), _rec(1, 0.91), _rec(2, 0.95)]
    b = [_rec(1, 0.90, "gat-ppo"), _rec(2, 0.92, "gat-ppo"), _rec(3, 0.50, "gat-ppo")]
    m, se, n = report.paired_diff(a, b, "test_top1")
    assert n == 2  # seeds 1 and 2 only; seed 3 has no partner
    assert m == pytest.approx(0.02)
    assert se == pytest.approx(0.01)


def test_missing_runs_are_listed_with_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(run.PENDING, "gat-ppo", "waits for its rework")
    mode = run.Mode(models=("resnet20", "resnet56"), forms=("folded",), targets=("macs-0.5",),
                    methods=("l1-uniform", "gat-ppo"), seeds=(0, 1, 2))
    cells = {("resnet20", "folded", "macs-0.5", "l1-uniform"): [_rec(0, 0.9)]}
    failed = {("resnet20", "folded", "macs-0.5", "l1-uniform"): [{**_rec(2, 0.0), "error": "RuntimeError: boom"}]}
    lines = report._missing(mode, cells, failed, {("resnet20", "folded")})
    text = "\n".join(lines)
    assert "resnet20 (folded) macs-0.5 l1-uniform: seed(s) 1: not run yet" in text
    assert "seed(s) 2 FAILED: RuntimeError: boom" in text
    assert "gat-ppo: seed(s) 0-2: waits for its rework" in text
    assert "**resnet56 (folded)**: all 6 runs" in text


def test_run_keys_and_seed_ranges() -> None:
    assert run.run_key("resnet20", "folded", "random", "macs-0.25", 3) == "resnet20__folded__random__macs-0.25__s3"
    assert run.run_key("resnet20", "bn", "random", "macs-0.5", 0, "quick").startswith("quick__")
    assert report._seeds([0, 1, 2, 3, 4]) == "0-4"
    assert report._seeds([0, 2]) == "0, 2"


def test_bad_search_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(["--search-option", "nosuch.episodes=3"]) == 2
    assert "expected METHOD.KEY=VALUE" in capsys.readouterr().err
    assert run.main(["--finetune-images", "0"]) == 2


def test_runs_pruned_without_fine_tune_are_listed() -> None:
    mode = run.Mode(models=("resnet20",), forms=("folded",), targets=("macs-0.5",), methods=("random",), seeds=(0, 1))
    cells = {("resnet20", "folded", "macs-0.5", "random"): [_rec(0, 0.9), {**_rec(1, 0.0), "test_top1": None}]}
    text = "\n".join(report._missing(mode, cells, {}, {("resnet20", "folded")}))
    assert "random: seed(s) 1 pruned and measured without fine-tune" in text
    assert "seed(s) 0" not in text


def test_rows_under_their_macs_budget_are_marked_unequal() -> None:
    assert report.macs_mark("macs-0.5", 0.499) == "" and report.macs_mark("macs-0.5", 0.491) == ""
    assert report.macs_mark("macs-0.5", 0.473) == "†" and report.macs_mark("macs-0.25", 0.2) == "†"
    assert report.macs_mark("latency-0.5", 0.2) == ""
    # latency rows, by the quiet one-thread latency share (1 / speed-up): over the budget, or 10% under it
    assert report.latency_mark("latency-0.5", 2.01) == "" and report.latency_mark("latency-0.5", 1.81) == "‡"
    assert report.latency_mark("latency-0.5", 2.2) == "" and report.latency_mark("latency-0.5", 2.3) == "†"
    assert report.latency_mark("latency-0.5", None) == "" and report.latency_mark("macs-0.5", 1.2) == ""


def test_teacher_logits_are_computed_once_per_base_and_seed(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fine-tunes of one base and seed share the teacher's pass (cached beside the bases)."""
    import numpy as np
    import onnx

    from onnxprune.data import load_dataset
    from onnxprune.torchcopy import to_torch
    from tests.tiny import digits_model

    monkeypatch.setattr(run, "MODEL_DIR", tmp_path)
    splits, model = digits_model(epochs=1)
    base = tmp_path / "tiny_folded.onnx"
    onnx.save(model, str(base))
    teacher = to_torch(model)
    first, note = run.shared_teacher_logits(base, "digits", 0, teacher, splits)
    assert note.startswith("shared: computed") and first.shape == (len(splits.train[0]), 10)
    again, note = run.shared_teacher_logits(base, "digits", 0, teacher, splits)
    assert note.startswith("shared: read") and np.array_equal(again, first)
    other = load_dataset("digits", input_shape=(1, 1, 8, 8), seed=1)  # another seed, another split
    _, note = run.shared_teacher_logits(base, "digits", 1, teacher, other)
    assert note.startswith("shared: computed") and len(list((tmp_path / "teacher").glob("*.npy"))) == 2


def _tiny_base(tmp_path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN202
    """Results and caches under tmp_path, and a small trained model saved there as the base "tiny"."""
    import onnx

    from tests.tiny import digits_model

    for name in ("SHIPPED", "MODEL_DIR", "RUNS", "RESULTS", "PASSES"):
        monkeypatch.setattr(run, name, tmp_path / name.lower())
    monkeypatch.setattr(run, "MODEL_OUT", tmp_path / "model_dir" / "pruned")
    _, model = digits_model(epochs=1)
    run.MODEL_OUT.mkdir(parents=True)
    run.RUNS.mkdir(parents=True)
    base = run.MODEL_DIR / "tiny_folded.onnx"
    onnx.save(model, str(base))
    return model, base


def test_latency_pass_times_every_stored_model_also_on_one_thread(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--latency-only` re-times a stored run's pruned model against its original: batch 1 and 32 at
    the default threads and batch 1 on one thread, into the run record and the pass summary."""
    import json

    import onnx

    from onnxprune.deps import analyze
    from onnxprune.rewrite import apply_keep

    model, base = _tiny_base(tmp_path, monkeypatch)
    a = analyze(model)
    keep = a.full_keep()
    keep[a.prunable()[0].unit_start] = False
    onnx.save(apply_keep(a, keep), str(run.MODEL_OUT / "tiny__folded__l1-uniform__macs-0.5__s0.onnx"))
    record = run.RUNS / "tiny__folded__l1-uniform__macs-0.5__s0.json"
    record.write_text(json.dumps({"model": "tiny", "form": "folded", "base": {"sha256": run._sha256(base)}}))
    info = run.latency_pass(rounds=1, runs=2, warmup=0)
    assert info["models"] == 1 and info["one_thread_batches"] == [1]
    quiet = json.loads(record.read_text())["latency_quiet"]
    for col in ("b1", "b32", "b1_t1"):
        assert quiet[f"original_{col}_ms"] > 0 and quiet[f"pruned_{col}_ms"] > 0
        assert quiet[f"speedup_{col}"] == pytest.approx(quiet[f"original_{col}_ms"] / quiet[f"pruned_{col}_ms"])
    assert json.loads((run.RESULTS / "latency_pass.json").read_text())["models"] == 1


def test_a_latency_target_is_measured_on_the_protocols_threads(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """latency-0.5: every timing that decides the target is taken on `latency_target_threads` (one
    thread: the steady figure), score methods bisect their MACs target under it, searches get it
    as `latency_threads`, and the record keeps the check. The clock is faked (MACs-proportional)."""
    import onnx

    import onnxprune.api
    from onnxprune.deps import analyze
    from tests.tiny import digits_model

    for name in ("RUNS", "TRAJECTORIES", "MODEL_OUT"):
        monkeypatch.setattr(run, name, tmp_path / name.lower())
    _, model = digits_model(epochs=1, folded=True)
    base = tmp_path / "tiny_folded.onnx"
    onnx.save(model, str(base))
    monkeypatch.setattr(run, "base_path", lambda arch, form: base)
    monkeypatch.setattr(run, "base_record", lambda arch: {})
    timed_on: list[int] = []  # the thread count of every timing

    def fake_latency(blob: bytes, batches: tuple[int, ...], protocol: run.Protocol,
                     threads: int = 0) -> dict[int, float]:
        timed_on.append(threads)
        return {b: analyze(onnx.load_from_string(blob)).macs * 1e-6 * b for b in batches}

    monkeypatch.setattr(run, "latency_ms", fake_latency)
    mode = run.Mode(models=("tiny",), forms=("folded",), targets=("latency-0.5",), methods=("l1-uniform",),
                    seeds=(0,), protocol=run.Protocol(data="digits"))
    record = run.run_one("tiny", "folded", "l1-uniform", "latency-0.5", 0, "test", mode, with_finetune=False)
    check = record["latency_target_check"]
    assert check["threads"] == 1 and check["batch"] == 1 and check["ratio"] <= 0.5
    assert record["macs_target_used"] is not None and record["macs_ratio"] <= 0.5 + 1e-9
    # the base, every bisection step and the check on one thread; the run's own b1/b32 figure at the default
    assert timed_on.count(0) == 1 and set(timed_on) == {0, 1} and len(timed_on) >= 4

    class Stop(Exception):
        pass

    given: list[onnxprune.api.PruneConfig] = []

    def fake_prune(path: object, cfg: onnxprune.api.PruneConfig) -> None:
        given.append(cfg)
        raise Stop

    monkeypatch.setattr(onnxprune.api, "prune", fake_prune)
    with pytest.raises(Stop):
        run.run_one("tiny", "folded", "gat-ppo", "latency-0.5", 0, "test", mode, with_finetune=False)
    assert given[0].target_latency == 0.5 and given[0].latency_threads == 1


def test_latency_bisection_treats_unreachable_fractions_as_too_small() -> None:
    from onnxprune.errors import UnsupportedModelError

    def make(f: float) -> float:
        if f < 0.3:  # below the method's smallest reachable MACs
            raise UnsupportedModelError("out of reach")
        return f

    model, f = run._bisect_latency(make, lambda m: m <= 0.32)
    assert model == f and 0.3 <= f <= 0.32
    with pytest.raises(RuntimeError, match="not reached"):
        run._bisect_latency(make, lambda m: m <= 0.2)


def test_runs_made_elsewhere_are_timed_on_their_rebuilt_twins(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run whose pruned model is not on this machine is timed on the widths it recorded, cut from
    its base; a stored model is timed beside its twin (the check); widths that do not reproduce the
    recorded MACs are not timed, and the pass says why."""
    import json

    import onnx

    from onnxprune.deps import analyze
    from onnxprune.rewrite import apply_keep

    model, base = _tiny_base(tmp_path, monkeypatch)
    a = analyze(model)
    keep = a.full_keep()
    for g in a.prunable():  # every other unit: not the first ones, which the twin keeps
        keep[g.unit_start + 1:g.unit_start + g.units:2] = False
    pruned = apply_keep(a, keep)
    rec = {"model": "tiny", "form": "folded", "base": {"sha256": run._sha256(base)},
           "macs_ratio": analyze(pruned).macs / a.macs, "kept": run._kept_fractions(pruned, a)}
    twin = run.rebuilt_from_widths(rec, model)
    assert twin is not None and run._kept_fractions(twin, a) == rec["kept"]
    for _ in range(2):  # the pass hands the base's analysis, reused across its runs: same twin each time
        assert run.rebuilt_from_widths(rec, a).SerializeToString() == twin.SerializeToString()
    assert analyze(twin).macs == analyze(pruned).macs
    assert run.rebuilt_from_widths({**rec, "macs_ratio": rec["macs_ratio"] * 1.01}, model) is None
    keys = {"stored": "tiny__folded__l1-uniform__macs-0.5__s0", "elsewhere": "tiny__folded__taylor-global__macs-0.5__s0",
            "wrong": "tiny__folded__random__macs-0.5__s0"}
    onnx.save(pruned, str(run.MODEL_OUT / f"{keys['stored']}.onnx"))
    for what, key in keys.items():
        (run.RUNS / f"{key}.json").write_text(json.dumps(
            {**rec, "macs_ratio": rec["macs_ratio"] * (1.01 if what == "wrong" else 1.0)}))
    info = run.latency_pass(rounds=1, runs=2, warmup=0)
    assert (info["models"], info["stored"], info["rebuilt"]) == (2, 1, 1)
    assert list(info["not_timed"]) == [keys["wrong"]]
    assert set(info["rebuilt_check"]) == {keys["stored"]}
    assert all(r > 0 for r in info["rebuilt_check"][keys["stored"]].values())
    timed = {w: json.loads((run.RUNS / f"{k}.json").read_text()).get("latency_quiet") for w, k in keys.items()}
    assert timed["stored"]["timed"] == "stored" and timed["elsewhere"]["timed"] == "rebuilt"
    assert timed["wrong"] is None
    passes = list(run.PASSES.glob("*.json"))
    assert len(passes) == 1 and json.loads(passes[0].read_text())["started"] == info["started"]


def test_rows_timed_by_an_earlier_pass_are_marked(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The report marks rows timed by an earlier quiet pass (§) and names that pass."""
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    (tmp_path / "latency_passes").mkdir()
    (tmp_path / "latency_passes" / "2026-11-29T0431.json").write_text(
        '{"started": "2026-11-29 04:31:04 UTC", "models": 7, "other_cores_busy": 0.01}')
    old = {**_rec(0, 0.9), "latency_quiet": {"pass": "2026-11-29 04:31:04 UTC"}}
    new = {**_rec(1, 0.9), "latency_quiet": {"pass": "2026-11-30 07:00:00 UTC"}}
    quiet = {"started": "2026-11-30 07:00:00 UTC", "models": 3, "stored": 1, "rebuilt": 2,
             "rebuilt_check": {"a": {"b1_t1": 1.02, "b1": 0.95, "b32": 1.2}}, "not_timed": {"b": "base not on this machine"}}
    lines = report._pass_sources(quiet, {("resnet20", "folded", "macs-0.5", "l1-uniform"): [old, new]})
    text = "\n".join(lines)
    assert "1 were the runs' stored pruned models and 2 rebuilt twins" in text
    assert "batch 1 on one thread 1.02-1.02 (100% within 10%)" in text and "batch 32 1.20-1.20 (0% within 10%)" in text
    assert "1 run(s): base not on this machine" in text
    assert "§ 1 run(s) keep their timings from the quiet pass of 2026-11-29 04:31:04 UTC" in text
    assert "`results/latency_passes/2026-11-29T0431.json`: 7 models" in text


def test_latency_cells_pair_only_runs_of_the_same_machine() -> None:
    """A latency target is a share of the measuring machine's latency: runs made on another machine
    are not paired with the reference."""
    ref = [{**_rec(s, 0.90, "gat-ppo"), "machine": "A"} for s in range(3)]
    other = [{**_rec(0, 0.95), "machine": "A"}, {**_rec(1, 0.99), "machine": "B"}, {**_rec(2, 0.93), "machine": "A"}]
    assert report.paired_diff(other, ref, "test_top1")[2] == 3
    m, _, n = report.paired_diff(other, ref, "test_top1", same_machine=True)
    assert n == 2 and m == pytest.approx(0.04)
    lines = report._machine_lines([{**r, "target": "latency-0.5"} for r in other] + [_rec(0, 0.9)])
    assert lines and "2 run(s) on A; 1 run(s) on B" in lines[0]


def test_torch_thread_counts_are_reported() -> None:
    runs = [{**_rec(0, 0.9), "threads": 2}, {**_rec(1, 0.9), "threads": 2}, {**_rec(2, 0.9), "threads": 1}, _rec(3, 0.9)]
    (line,) = report._torch_threads_line(runs)
    assert "2 run(s) on 2, 1 run(s) on 1." in line
    assert report._torch_threads_line([_rec(0, 0.9)]) == []


def test_benchmark_runs_use_every_core_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    seen: list[int] = []
    monkeypatch.setattr(run, "run_mode", lambda *a, **k: seen.append(torch.get_num_threads()))
    monkeypatch.setattr(report, "write_report", lambda: "BENCHMARKS.md")
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert run.main(["--models", "resnet20"]) == 0
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert run.main(["--models", "resnet20"]) == 0
    finally:
        torch.set_num_threads(before)
    assert seen == [os.cpu_count(), 1]


def test_a_runs_note_states_the_measured_load_of_other_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    hz = os.sysconf("SC_CLK_TCK")
    readings = iter([(1000, 100), (1000 + 3 * hz, 100 + hz)])  # (machine busy, this process) jiffies
    monkeypatch.setattr(run, "_cpu_jiffies", lambda: next(readings))
    clock = iter([10.0, 12.0])
    monkeypatch.setattr(run.time, "perf_counter", lambda: next(clock))
    record: dict = {}
    run._OtherLoad().note(record, "pruning")  # 2 s of wall time, others busy for 2 of the 3 busy seconds
    assert record["other_cores_busy"] == {"pruning": 1.0}
    assert record["note"] == "other processes used on average 1.00 cores while pruning (from /proc/stat)"


def test_gat_ppo_runs_made_before_the_ordinal_head_are_relabelled(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from benchmarks import relabel

    monkeypatch.setattr(relabel, "MODEL_OUT", tmp_path / "pruned")
    monkeypatch.setattr(relabel, "ROOT", tmp_path)
    (tmp_path / "pruned").mkdir()
    (tmp_path / "trajectories").mkdir()
    (tmp_path / "trajectories" / "resnet20__folded__gat-ppo__macs-0.5__s0.json").write_text("{}")
    old = {**_rec(0, 0.92, "gat-ppo"), "mode": "protocol", "search_summary": {"learner": "ppo"},
           "trajectory": "trajectories/resnet20__folded__gat-ppo__macs-0.5__s0.json"}
    new = {**_rec(1, 0.93, "gat-ppo"), "mode": "protocol", "search_summary": {"learner": "ppo", "head": "ordinal"}}
    failed = {**_rec(2, 0.0, "gat-ppo"), "mode": "protocol", "error": "boom"}
    for rec in (old, new, failed):
        (tmp_path / f"{run.run_key('resnet20', 'folded', 'gat-ppo', 'macs-0.5', rec['seed'])}.json").write_text(
            json.dumps(rec))
    (tmp_path / "pruned" / "resnet20__folded__gat-ppo__macs-0.5__s0.onnx").write_bytes(b"x")
    assert len(relabel.relabel(tmp_path)) == 1 and len(list(tmp_path.glob("*.json"))) == 3  # a dry run moves nothing
    moved = relabel.relabel(tmp_path, apply=True)  # a failed run has no summary to tell: it stays
    assert [n.name for _, n in moved] == ["resnet20__folded__gat-ppo-v1__macs-0.5__s0.json"]
    rec = json.loads((tmp_path / "resnet20__folded__gat-ppo-v1__macs-0.5__s0.json").read_text())
    assert rec["method"] == "gat-ppo-v1" and rec["relabelled"]["from"] == "gat-ppo" and rec["test_top1"] == 0.92
    assert (tmp_path / "pruned" / "resnet20__folded__gat-ppo-v1__macs-0.5__s0.onnx").exists()
    assert rec["trajectory"] == "trajectories/resnet20__folded__gat-ppo-v1__macs-0.5__s0.json"
    assert (tmp_path / rec["trajectory"]).exists() and not (tmp_path / "trajectories" / "resnet20__folded__gat-ppo__macs-0.5__s0.json").exists()
    assert (tmp_path / "resnet20__folded__gat-ppo__macs-0.5__s1.json").exists()  # made with the new defaults
    assert relabel.relabel(tmp_path) == []
    # the variant sets the old defaults explicitly; the protocol does not require it
    assert run.VARIANTS[run.GAT_PPO_V1] == ("gat-ppo", {"head": "categorical", "entropy": 0.01})
    assert run.GAT_PPO_V1 not in run.MODES["protocol"].methods
    # variants' runs with the old defaults are named in the report
    (line,) = report._gat_ppo_defaults_line([{**_rec(0, 0.9, "gat-ppo-tier2"), "search_summary": {"learner": "ppo"}},
                                             {**_rec(0, 0.9, "gat-ppo-prior"), "search_summary": {"learner": "prior"}}])
    assert "gat-ppo-tier2 (1)" in line and "gat-ppo-prior" not in line


def test_cells_without_a_comparable_gat_ppo_run_compare_with_gat_ppo_v1() -> None:
    runs = [{**_rec(s, 0.90 + 0.01 * s, "l1-uniform"), "machine": "A"} for s in range(3)]
    v1 = [{**_rec(s, 0.91 + 0.01 * s, "gat-ppo-v1"), "machine": "A"} for s in range(3)]
    new = [{**_rec(s, 0.95, "gat-ppo"), "target": "latency-0.5", "machine": "B"} for s in range(3)]
    assert report._diff_text(runs, v1, "macs-0.5") == "-1.00 ± 0.00 (n=3)"
    lat = [{**r, "target": "latency-0.5"} for r in runs]
    assert report._diff_text(lat, new, "latency-0.5") == "no paired seeds on the same machine"
    # the table cell: gat-ppo where it is comparable, else gat-ppo-v1, saying why
    assert report._diff_cell("l1-uniform", runs, [], v1, "macs-0.5") == "gat-ppo missing; vs gat-ppo-v1: -1.00 ± 0.00 (n=3)"
    v1_lat = [{**r, "target": "latency-0.5"} for r in v1]
    assert report._diff_cell("l1-uniform", lat, new, v1_lat, "latency-0.5") == \
        "gat-ppo no paired seeds on the same machine; vs gat-ppo-v1: -1.00 ± 0.00 (n=3)"
    same = [{**r, "machine": "A"} for r in new]
    assert report._diff_cell("l1-uniform", lat, same, v1_lat, "latency-0.5").startswith("-")  # comparable: gat-ppo
    assert report._diff_cell("gat-ppo-v1", v1, [], [], "macs-0.5") == "gat-ppo missing"
    assert report._diff_cell("gat-ppo", new, new, v1, "macs-0.5") == "reference"
