"""The CLI: exit codes, one-line errors, no half-written files, the input never modified."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
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
    assert_one_line_error(run("prune", str(model_file), "-o", str(out), "--sparsity", "0.3", "--latency-threads",
                              "-1"), "--latency-threads")
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
                              "--data", "digits", "--global"), "--global")
    assert not out.exists()


def test_missing_dataset_is_one_line(model_file: Path, tmp_path: Path) -> None:
    proc = run("eval", str(model_file), "--data", f"fashion-mnist:{tmp_path / 'nowhere'}")
    assert_one_line_error(proc, "apt-get install dataset-fashion-mnist")


# --------------------------------------------------------------------------------------------
# issue 11: nothing lost, nothing wrong


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("command", ["analyze", "bench", "eval", "prune-o", "prune-report", "prune-trajectory",
                                     "prune-plot", "prune-checkpoint", "finetune"])
def test_no_output_can_replace_an_input(model_file: Path, tmp_path: Path, command: str) -> None:
    before = digest(model_file)
    link = tmp_path / "link.onnx"
    link.symlink_to(model_file)
    out = tmp_path / "o.onnx"
    args = {
        "analyze": ["analyze", str(model_file), "--json", str(link)],
        "bench": ["bench", str(model_file), "--runs", "1", "--json", str(model_file)],
        "eval": ["eval", str(model_file), "--data", "random", "--json", str(model_file)],
        "prune-o": ["prune", str(link), "-o", str(model_file), "--sparsity", "0.3"],
        "prune-report": ["prune", str(model_file), "-o", str(out), "--sparsity", "0.3", "--report", str(link)],
        "prune-trajectory": ["prune", str(model_file), "-o", str(out), "--sparsity", "0.3", "--method", "sacp",
                             "--data", "digits", "--trajectory", str(model_file)],
        "prune-plot": ["prune", str(model_file), "-o", str(out), "--sparsity", "0.3", "--method", "sacp",
                       "--data", "digits", "--plot", str(model_file)],
        "prune-checkpoint": ["prune", str(model_file), "-o", str(out), "--sparsity", "0.3", "--method", "sacp",
                             "--data", "digits", "--checkpoint", str(model_file)],
        "finetune": ["finetune", str(out), "--teacher", str(model_file), "--data", "digits", "-o", str(link)],
    }[command]
    assert_one_line_error(run(*args), "refusing to overwrite an input")
    assert digest(model_file) == before and not out.exists()


def test_hard_link_and_external_data_are_inputs(tmp_path: Path) -> None:
    from onnx.external_data_helper import convert_model_to_external_data

    model = graphs.conv_bn_relu_conv()
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location="m.data", size_threshold=0)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    before = digest(tmp_path / "m.data")
    assert_one_line_error(run("prune", str(path), "-o", str(tmp_path / "m.data"), "--sparsity", "0.3"), "overwrite")
    import os

    os.link(path, tmp_path / "hard.onnx")
    assert_one_line_error(run("analyze", str(path), "--json", str(tmp_path / "hard.onnx")), "overwrite")
    assert digest(tmp_path / "m.data") == before
    assert run("prune", str(path), "-o", str(tmp_path / "p.onnx"), "--sparsity", "0.3").returncode == 0


@pytest.mark.parametrize("command", ["analyze", "bench", "eval"])
def test_json_dash_writes_to_stdout(model_file: Path, command: str) -> None:
    extra = {"analyze": [], "bench": ["--runs", "2", "--warmup", "0"], "eval": ["--data", "random"]}[command]
    proc = run(command, str(model_file), *extra, "--json", "-")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert isinstance(data, dict) and data


def test_outputs_are_checked_before_any_work(model_file: Path, tmp_path: Path) -> None:
    import time

    out = tmp_path / "o.onnx"
    start = time.perf_counter()
    # the search would take minutes: the refusal comes first
    proc = run("prune", str(model_file), "-o", str(tmp_path), "--sparsity", "0.3", "--method", "sacp",
               "--data", "digits")
    assert_one_line_error(proc, "is a directory")
    assert str(tmp_path) in proc.stderr
    assert time.perf_counter() - start < 60
    proc = run("prune", str(model_file), "-o", str(out), "--sparsity", "0.3", "--report",
               str(tmp_path / "missing" / "r.json"))
    assert_one_line_error(proc, "does not exist")
    assert not out.exists()  # no model left behind either
    assert_one_line_error(run("prune", str(model_file), "-o", str(out), "--sparsity", "0.3", "--report", str(out)),
                          "same file")
    assert_one_line_error(run("bench", str(model_file), "--json", str(tmp_path / "no" / "b.json")), "does not exist")
    assert no_temp_files(tmp_path)


def test_unwritable_folder_is_refused_up_front(model_file: Path, tmp_path: Path) -> None:
    import os

    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
    elif Path("/proc/sys").is_dir() and not os.access("/proc/sys", os.W_OK):
        folder = Path("/proc/sys")  # read-only even for root
    else:
        pytest.skip("running as root without a read-only folder")
    proc = run("prune", str(model_file), "-o", str(folder / "o.onnx"), "--sparsity", "0.3")
    assert_one_line_error(proc, "cannot write in folder")
    assert str(folder) in proc.stderr


def test_outputs_get_normal_permissions(model_file: Path, tmp_path: Path) -> None:
    import os
    import stat

    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    old = os.umask(0o022)
    try:
        assert run("prune", str(model_file), "-o", str(out), "--sparsity", "0.3", "--report", str(report)).returncode == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644 and stat.S_IMODE(report.stat().st_mode) == 0o644
    out.chmod(0o640)
    assert run("prune", str(model_file), "-o", str(out), "--sparsity", "0.5").returncode == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o640


PATCHED = [sys.executable, "-c", "import sys; exec(sys.argv[1]); from onnxprune.cli import main; "
                                 "sys.exit(main(sys.argv[2:]))"]


def run_patched(patch: str, *args: str, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(PATCHED + [patch] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kwargs)  # type: ignore[call-overload]


@pytest.mark.parametrize("sig, code", [("SIGTERM", 143), ("SIGHUP", 129)])
def test_sigterm_and_sighup_are_handled_like_sigint(model_file: Path, tmp_path: Path, sig: str, code: int) -> None:
    import signal

    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    patch = ("import time, onnxprune.api as api\n"
             "def slow(*a, **k):\n    print('started', flush=True)\n    time.sleep(120)\n"
             "api.prune = slow")
    proc = run_patched(patch, "prune", str(model_file), "-o", str(out), "--sparsity", "0.3", "--report", str(report))
    assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
    proc.send_signal(getattr(signal, sig))
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and sig in lines[0]
    assert not out.exists() and not report.exists() and no_temp_files(tmp_path)


def test_a_signal_while_writing_leaves_no_temporary_file(model_file: Path, tmp_path: Path) -> None:
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    # SIGTERM arrives while the second temporary file is being written (at its fsync)
    patch = ("import os, signal\nreal = os.fsync\ncalls = []\n"
             "def fsync(fd):\n    calls.append(fd)\n    real(fd)\n"
             "    if len(calls) == 2: os.kill(os.getpid(), signal.SIGTERM)\n"
             "os.fsync = fsync")
    proc = run_patched(patch, "prune", str(model_file), "-o", str(out), "--sparsity", "0.3", "--report", str(report))
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert not out.exists() and not report.exists() and no_temp_files(tmp_path)


def test_our_own_failure_is_exit_1_and_not_blamed_on_the_input(model_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.onnx"
    patch = ("import onnxprune.api as api\nfrom onnxprune.errors import VerificationError\n"
             "def bad(*a, **k):\n    raise VerificationError('output y differs from the masked original')\n"
             "api.verify = bad")
    proc = run_patched(patch, "prune", str(model_file), "-o", str(out), "--sparsity", "0.3")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "onnxprune's fault" in lines[0] and "Traceback" not in stderr
    assert not out.exists()


@pytest.mark.parametrize("kind", ["if", "loop", "nested"])
@pytest.mark.parametrize("verify_flag", ["--verify", "--no-verify"])
def test_control_flow_consumers_freeze_their_group(tmp_path: Path, kind: str, verify_flag: str) -> None:
    from tests import fuzzkit

    path = tmp_path / "cf.onnx"
    onnx.save(fuzzkit.control_flow(kind), str(path))
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    # --simplify off: onnxsim would fold the constant-condition control flow away, and this test
    # is about the analysis of control flow itself
    proc = run("prune", str(path), "-o", str(out), "--sparsity", "0.5", "--report", str(report), verify_flag,
               "--simplify", "off")
    assert proc.returncode == 0, proc.stderr
    ok, error = fuzzkit._runs(out)
    assert ok, error
    groups = json.loads(report.read_text())["groups"]
    conv1 = next(g for g in groups if "conv1" in g["producers"])
    assert not conv1["prunable"] and fuzzkit.CONTROL_FLOW_NODES[kind] in conv1["reason"]
    assert len(conv1["kept"]) == conv1["channels"]


def _broken(tmp_path: Path, case: str) -> Path:
    from onnx import numpy_helper

    model = graphs.conv_bn_relu_conv()
    inits = {t.name: t for t in model.graph.initializer}
    if case == "conv-weight-shape":
        inits["conv1.weight"].CopyFrom(numpy_helper.from_array(np.zeros((4, 7, 3, 3), np.float32), "conv1.weight"))
    elif case == "bn-param-shape":
        inits["bn0.weight"].CopyFrom(numpy_helper.from_array(np.ones(7, np.float32), "bn0.weight"))
    elif case == "dropped-initializer":
        model.graph.initializer.remove(inits["bn0.running_var"])
    elif case == "dtype":
        inits["conv0.bias"].CopyFrom(numpy_helper.from_array(np.zeros(8, np.float64), "conv0.bias"))
    elif case == "deleted-node":
        del model.graph.node[1]
    elif case == "conv-group":
        next(a for a in model.graph.node[0].attribute if a.name == "group").i = 3
    path = tmp_path / f"{case}.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("case", ["conv-weight-shape", "bn-param-shape", "dropped-initializer", "dtype",
                                  "deleted-node", "conv-group"])
@pytest.mark.parametrize("verify_flag", ["--verify", "--no-verify"])
def test_broken_inputs_are_exit_2_before_any_work(tmp_path: Path, case: str, verify_flag: str) -> None:
    path = _broken(tmp_path, case)
    before = digest(path)
    out = tmp_path / "o.onnx"
    proc = run("prune", str(path), "-o", str(out), "--sparsity", "0.3", verify_flag)
    assert_one_line_error(proc, str(path))
    assert not out.exists() and digest(path) == before and no_temp_files(tmp_path)


def test_onnxruntime_refusal_is_one_line(tmp_path: Path) -> None:
    model = graphs.conv_bn_relu_conv()
    model.graph.node[1].name = model.graph.node[0].name  # the checker lets it pass, onnxruntime does not
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    assert_one_line_error(run("analyze", str(path)), "onnxruntime cannot load the input")


def test_contradicting_input_shape_is_one_line(model_file: Path) -> None:
    assert_one_line_error(run("analyze", str(model_file), "--input-shape", "x:1x3x32x32"), "contradicts")


def test_deduplicated_constants_prune(tmp_path: Path) -> None:
    """The dynamo exporter's shared BatchNorm constants (the DenseNet-121 opset-18 IndexError)."""
    from tests.test_inputs import shared_constants

    path = tmp_path / "m.onnx"
    onnx.save(shared_constants(), str(path))
    proc = run("prune", str(path), "-o", str(tmp_path / "o.onnx"), "--target-flops", "0.5")
    assert proc.returncode == 0, proc.stderr


def test_foreign_checkpoint_is_refused_and_never_run(model_file: Path, tmp_path: Path) -> None:
    import pickle

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):  # noqa: ANN204 - what a malicious checkpoint does
            return (Path.touch, (marker,))

    evil = tmp_path / "state.ckpt"
    evil.write_bytes(pickle.dumps({"fingerprint": "x", "state": Evil()}))
    out = tmp_path / "o.onnx"
    proc = run("prune", str(model_file), "-o", str(out), "--target-flops", "0.7", "--method", "sacp", "--data",
               "digits", "--checkpoint", str(evil), "--resume", "--eval-images", "20")
    assert_one_line_error(proc, "not an onnxprune checkpoint")
    assert not marker.exists() and not out.exists()
