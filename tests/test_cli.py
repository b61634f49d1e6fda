"""The CLI: exit codes, one-line errors, no half-written files, the input never modified."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import helper

from tests import graphs

EXE = [sys.executable, "-m", "onnxprune.cli"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(EXE + list(args), capture_output=True, text=True, cwd=cwd, timeout=300)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    onnx.save(graphs.conv_bn_relu_conv(), str(path))
    return path


def assert_one_line_error(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert needle.lower() in lines[0].lower()


def bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    good = tmp_path / "good.onnx"
    onnx.save(graphs.residual("Add"), str(good))
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    no_conv = tmp_path / "noconv.onnx"
    onnx.save(graphs.no_conv(), str(no_conv))
    bogus = graphs.conv_bn_relu_conv()
    bogus.graph.node[2].op_type = "NotAnOnnxOp"
    unsupported = tmp_path / "unsupported.onnx"
    onnx.save(bogus, str(unsupported))
    return {
        "missing": (tmp_path / "missing.onnx", "no such file"),
        "not-onnx": (text, "not"),
        "truncated": (truncated, "onnx"),
        "no-conv": (no_conv, "no conv"),
        "unsupported-op": (unsupported, "NotAnOnnxOp"),
    }


@pytest.mark.parametrize("case", ["missing", "not-onnx", "truncated", "no-conv", "unsupported-op"])
def test_analyze_bad_input(tmp_path: Path, case: str) -> None:
    path, needle = bad_inputs(tmp_path)[case]
    assert_one_line_error(run("analyze", str(path)), needle)


@pytest.mark.parametrize("case", ["missing", "not-onnx", "truncated", "no-conv", "unsupported-op"])
def test_prune_bad_input(tmp_path: Path, case: str) -> None:
    path, needle = bad_inputs(tmp_path)[case]
    before = digest(path) if path.exists() else None
    out = tmp_path / "out.onnx"
    proc = run("prune", str(path), "-o", str(out), "--sparsity", "0.3", "--report", str(tmp_path / "r.json"))
    assert_one_line_error(proc, needle)
    assert not out.exists() and not (tmp_path / "r.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp files
    if before is not None:
        assert digest(path) == before


@pytest.mark.parametrize("case", ["missing", "not-onnx", "truncated"])
def test_bench_bad_input(tmp_path: Path, case: str) -> None:
    path, _ = bad_inputs(tmp_path)[case]
    json_out = tmp_path / "b.json"
    proc = run("bench", str(path), "--runs", "2", "--json", str(json_out))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len([ln for ln in proc.stderr.splitlines() if ln.strip()]) == 1
    assert not json_out.exists()


def test_analyze_table_and_json(model_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "a.json"
    proc = run("analyze", str(model_file), "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "conv1" in proc.stdout and "MACs" in proc.stdout
    data = json.loads(out.read_text())
    assert data["macs"] > 0 and data["params"] > 0
    for g in data["groups"]:
        assert set(g) >= {"id", "channels", "prunable", "reason", "producers", "consumers"}
    assert any(g["prunable"] for g in data["groups"])


def test_prune_writes_verified_model_and_report(model_file: Path, tmp_path: Path) -> None:
    before = digest(model_file)
    out, report = tmp_path / "p.onnx", tmp_path / "p.json"
    proc = run("prune", str(model_file), "-o", str(out), "--target-flops", "0.6", "--report", str(report))
    assert proc.returncode == 0, proc.stderr
    assert "verified" in proc.stdout
    assert digest(model_file) == before
    onnx.checker.check_model(onnx.load(str(out)))
    data = json.loads(report.read_text())
    assert data["after"]["macs"] <= 0.6 * data["macs"]
    kept = [g["kept"] for g in data["groups"] if g["prunable"]]
    assert kept and all(isinstance(k, list) and k for k in kept)


def test_prune_refuses_to_overwrite_input(model_file: Path) -> None:
    before = digest(model_file)
    proc = run("prune", str(model_file), "-o", str(model_file), "--sparsity", "0.3")
    assert_one_line_error(proc, "overwrite")
    assert digest(model_file) == before


def test_unreachable_target_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(graphs.conv_bn_relu_conv(), str(path))
    out = tmp_path / "o.onnx"
    proc = run("prune", str(path), "-o", str(out), "--target-flops", "0.001")
    assert_one_line_error(proc, "out of reach")
    assert not out.exists()


def test_bad_flag_values(model_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.onnx"
    assert_one_line_error(run("prune", str(model_file), "-o", str(out), "--sparsity", "1.5"), "sparsity")
    assert_one_line_error(run("prune", str(model_file), "-o", str(out), "--sparsity", "0.3", "--exclude", "nope"),
                          "nope")
    assert run("prune", str(model_file), "-o", str(out)).returncode == 2
    assert not out.exists()


def test_bench_two_models_speedup_column(model_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.onnx"
    assert run("prune", str(model_file), "-o", str(out), "--sparsity", "0.5").returncode == 0
    js = tmp_path / "b.json"
    proc = run("bench", str(model_file), str(out), "--runs", "3", "--warmup", "1", "--batch", "1", "2",
               "--json", str(js))
    assert proc.returncode == 0, proc.stderr
    assert "speed-up" in proc.stdout
    assert len(json.loads(js.read_text())["results"]) == 4


def test_dynamic_input_needs_input_shape(tmp_path: Path) -> None:
    model = graphs.conv_bn_relu_conv()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].ClearField("dim_value")
    dims[2].dim_param = "H"
    dims[3].ClearField("dim_value")
    dims[3].dim_param = "W"
    path = tmp_path / "dyn.onnx"
    onnx.save(model, str(path))
    proc = run("analyze", str(path))
    assert_one_line_error(proc, "--input-shape")
    name = model.graph.input[0].name
    shape = "x".join(str(d.dim_value or 8) for d in dims)
    ok = run("analyze", str(path), "--input-shape", f"{name}:{shape.replace('0x', '1x', 1)}")
    assert ok.returncode == 0, ok.stderr


def test_data_methods_need_data(model_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.onnx"
    assert_one_line_error(run("prune", str(model_file), "-o", str(out), "--sparsity", "0.3", "--method", "taylor"),
                          "--data")
    assert_one_line_error(run("prune", str(model_file), "-o", str(out), "--sparsity", "0.3",
                              "--finetune-epochs", "1"), "--data")
    for method in ("gat-ppo", "rl-pruner", "sacp"):
        assert_one_line_error(run("prune", str(model_file), "-o", str(out), "--sparsity", "0.3", "--method", method),
                              "--data")
    assert_one_line_error(run("prune", str(model_file), "-o", str(out), "--target-params", "0.5"),
                          "search method")
    assert_one_line_error(run("prune", str(model_file), "-o", str(out), "--target-flops", "0.5", "--method", "sacp",
                              "--data", "digits", "--round-to", "8"), "--round-to")
    assert not out.exists()


def test_missing_dataset_is_one_line(model_file: Path, tmp_path: Path) -> None:
    proc = run("eval", str(model_file), "--data", f"fashion-mnist:{tmp_path / 'nowhere'}")
    assert_one_line_error(proc, "apt-get install dataset-fashion-mnist")
