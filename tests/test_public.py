"""The top-level API (`onnxprune.analyze / prune / benchmark / evaluate / finetune`), errors that
speak of parameters in Python and of flags on the command line, help text for every option, and
`schema_version` plus the tool version in every JSON output."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

import onnxprune
from onnxprune.errors import InputError, option
from tests import graphs

EXE = [sys.executable, "-m", "onnxprune"]


@pytest.fixture()
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    onnx.save(graphs.conv_bn_relu_conv(), str(path))
    return path


def test_top_level_functions_are_typed_and_documented() -> None:
    import inspect

    for name in ("analyze", "prune", "benchmark", "evaluate", "finetune"):
        fn = getattr(onnxprune, name)
        assert fn.__doc__ and "Args:" in fn.__doc__ and "Returns:" in fn.__doc__, name
        sig = inspect.signature(fn)
        assert sig.return_annotation is not inspect.Signature.empty, name
        assert all(p.annotation is not inspect.Parameter.empty for p in sig.parameters.values()), name
    assert (Path(onnxprune.__file__).parent / "py.typed").exists()
    assert set(onnxprune.__all__) >= {"analyze", "prune", "benchmark", "evaluate", "finetune"}


def test_analyze_prune_benchmark_evaluate(model_file: Path, tmp_path: Path) -> None:
    analysis = onnxprune.analyze(model_file, json=tmp_path / "a.json")
    assert analysis.prunable() and analysis.macs > 0
    out, report = tmp_path / "pruned.onnx", tmp_path / "report.json"
    before = model_file.read_bytes()
    result = onnxprune.prune(model_file, out, target_flops=0.5, report=report)
    assert model_file.read_bytes() == before
    m0, m1 = result.macs
    assert m1 <= 0.5 * m0 and out.exists()
    assert onnxprune.analyze(out).macs == m1
    doc = json.loads(report.read_text())
    assert doc["after"]["macs"] == m1 and doc["verify"]["reference"] == "original"
    results = onnxprune.benchmark([model_file, out], runs=3, warmup=1, json=tmp_path / "b.json")
    assert [r.model for r in results] == [str(model_file), str(out)]
    acc = onnxprune.evaluate(out, "random", split="val")
    assert 0.0 <= acc.top1 <= 1.0 and acc.n > 0
    for name in ("a.json", "report.json", "b.json"):
        stamp = json.loads((tmp_path / name).read_text())
        assert stamp["schema_version"] == 1 and stamp["tool"] == {"name": "onnxprune", "version": onnxprune.__version__}


def test_prune_in_memory_writes_nothing(tmp_path: Path) -> None:
    result = onnxprune.prune(graphs.residual("Add"), sparsity=0.5)
    assert isinstance(result.model, onnx.ModelProto) and result.verified is not None
    assert list(tmp_path.iterdir()) == []


def test_api_errors_name_parameters(model_file: Path, tmp_path: Path) -> None:
    before = model_file.read_bytes()
    with pytest.raises(InputError) as err:
        onnxprune.prune(model_file, tmp_path / "o.onnx", target_flops=1.5)
    assert "target_flops" in str(err.value) and "--" not in str(err.value)
    with pytest.raises(InputError) as err:
        onnxprune.prune(model_file, tmp_path / "o.onnx", sparsity=0.3, method="taylor")
    assert "data" in str(err.value) and "--data" not in str(err.value)
    with pytest.raises(InputError, match="round_to"):
        onnxprune.prune(model_file, tmp_path / "o.onnx", sparsity=0.3, round_to=0)
    with pytest.raises(InputError, match="unknown parameter"):
        onnxprune.prune(model_file, sparsity=0.3, target_flop=0.5)
    with pytest.raises(InputError):  # the output would replace the input
        onnxprune.prune(model_file, model_file, sparsity=0.3)
    assert model_file.read_bytes() == before
    assert not (tmp_path / "o.onnx").exists()


def test_cli_errors_name_flags(model_file: Path, tmp_path: Path) -> None:
    proc = subprocess.run(EXE + ["prune", str(model_file), "-o", str(tmp_path / "o.onnx"), "--sparsity", "0.3",
                                 "--method", "taylor"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--data" in proc.stderr and "--method taylor" in proc.stderr


def test_option_names() -> None:
    from onnxprune.errors import cli_style

    assert option("target_flops") == "target_flops" and option("round_to", 0) == "round_to=0"
    with cli_style():
        assert option("target_flops") == "--target-flops" and option("global_ranking") == "--global"
        assert option("method", "taylor") == "--method taylor"
    assert option("global_ranking") == "global_ranking"


def _parsers() -> dict[str, argparse.ArgumentParser]:
    from onnxprune.cli import build_parser

    root = build_parser()
    sub = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
    return {"onnxprune": root, **{f"onnxprune {name}": p for name, p in sub.choices.items()}}


def test_every_option_has_help_and_every_command_an_example() -> None:
    missing = []
    for name, parser in _parsers().items():
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
        assert parser.description, f"{name} has no description"
        assert parser.epilog and "examples:" in parser.epilog, f"{name} has no examples"
    assert not missing, f"options without help text: {missing}"


def test_python_m_onnxprune() -> None:
    proc = subprocess.run(EXE + ["--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "onnxprune prune model.onnx" in proc.stdout
    proc = subprocess.run(EXE + ["--version"], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == f"onnxprune {onnxprune.__version__}"


def test_cli_json_outputs_are_stamped(model_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.onnx"
    cmds = {
        "analyze.json": ["analyze", str(model_file), "--json", str(tmp_path / "analyze.json")],
        "report.json": ["prune", str(model_file), "-o", str(out), "--sparsity", "0.5", "--report",
                        str(tmp_path / "report.json")],
        "bench.json": ["bench", str(model_file), "--runs", "2", "--warmup", "0", "--json", str(tmp_path / "bench.json")],
        "eval.json": ["eval", str(model_file), "--data", "random", "--json", str(tmp_path / "eval.json")],
    }
    for name, cmd in cmds.items():
        proc = subprocess.run(EXE + cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        doc = json.loads((tmp_path / name).read_text())
        assert doc["schema_version"] == 1 and doc["tool"]["version"] == onnxprune.__version__, name
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert bench["onnxruntime"]["version"] and bench["onnxruntime"]["providers_used"]
    assert bench["machine"]["cpu"]


def _cli_dests(command: str) -> set[str]:
    parser = _parsers()[f"onnxprune {command}"]
    return {a.dest for a in parser._actions if not isinstance(a, argparse._HelpAction)}


def test_finetune_and_evaluate_take_the_cli_settings() -> None:
    """Every setting of `onnxprune finetune` / `eval` is a parameter of the API function
    (`-o` is `output`, `--input-shape` is `input_shapes`, `--teacher` the second argument)."""
    import inspect

    rename = {"input_shape": "input_shapes"}
    for command, fn in (("finetune", onnxprune.finetune), ("eval", onnxprune.evaluate)):
        params = set(inspect.signature(fn).parameters)
        missing = {rename.get(d, d) for d in _cli_dests(command)} - params
        assert not missing, f"onnxprune.{fn.__name__} lacks {sorted(missing)} of `onnxprune {command}`"
    params = inspect.signature(onnxprune.finetune).parameters
    for name in ("device", "amp", "calib_images", "eval_images", "images", "data_workers"):
        assert name in params and params[name].kind is inspect.Parameter.KEYWORD_ONLY, name


def test_finetune_and_evaluate_with_caps(model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxprune.api import PruneConfig
    import onnxprune.torchcopy as torchcopy
    from onnxprune.torchcopy import device as dev

    pruned = tmp_path / "pruned.onnx"
    onnxprune.prune(model_file, pruned, sparsity=0.5)
    seen = {}
    real = torchcopy.finetune

    def spy(pruned_model, teacher, splits, cfg):  # the settings that reach the trainer
        seen["cfg"] = cfg
        return real(pruned_model, teacher, splits, cfg)

    monkeypatch.setattr(torchcopy, "finetune", spy)
    out = tmp_path / "tuned.onnx"
    before = pruned.read_bytes()
    result = onnxprune.finetune(pruned, model_file, "random", out, epochs=1, images=64, eval_images=32,
                                calib_images=16, device="cpu", data_workers=0, seed=3)
    cfg = seen["cfg"]
    assert (cfg.max_train, cfg.max_val, cfg.calib_images, cfg.device, cfg.workers, cfg.seed) == (64, 32, 16, "cpu", 0, 3)
    assert out.exists() and pruned.read_bytes() == before and result.model is not None
    assert PruneConfig().calib_images == inspect_default(onnxprune.finetune, "calib_images")

    acc = onnxprune.evaluate(out, "random", split="test", images=10, json=tmp_path / "e.json")
    assert acc.n == 10
    assert json.loads((tmp_path / "e.json").read_text())["n"] == 10
    assert onnxprune.evaluate(out, "random", split="test").n > 10

    for kwargs, name in (({"images": 0}, "images"), ({"calib_images": 0}, "calib_images"),
                         ({"eval_images": -1}, "eval_images"), ({"optimizer": "adam"}, "optimizer"),
                         ({"epochs": 0}, "epochs")):
        with pytest.raises(InputError) as err:
            onnxprune.finetune(pruned, model_file, "random", **kwargs)
        assert name in str(err.value) and "--" not in str(err.value), kwargs
    monkeypatch.setattr(dev, "cuda_available", lambda: False)
    with pytest.raises(InputError) as err:
        onnxprune.finetune(pruned, model_file, "random", device="cuda")
    assert "device='cuda'" in str(err.value) and "--" not in str(err.value)
    with pytest.raises(InputError, match="images"):
        onnxprune.evaluate(out, "random", images=0)


def inspect_default(fn, name: str):  # noqa: ANN001, ANN201 - a test helper
    import inspect

    return inspect.signature(fn).parameters[name].default


def test_cli_eval_and_finetune_caps(model_file: Path, tmp_path: Path) -> None:
    pruned, tuned = tmp_path / "pruned.onnx", tmp_path / "tuned.onnx"
    onnxprune.prune(model_file, pruned, sparsity=0.5)
    proc = subprocess.run(EXE + ["eval", str(pruned), "--data", "random", "--images", "7", "--json", "-"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n"] == 7
    proc = subprocess.run(EXE + ["finetune", str(pruned), "--teacher", str(model_file), "--data", "random",
                                 "-o", str(tuned), "--epochs", "1", "--images", "32", "--calib-images", "0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--calib-images" in proc.stderr and not tuned.exists()
