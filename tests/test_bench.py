"""Tests for onnxprune.bench: onnxruntime latency on tiny models built with onnx.helper."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from rich.console import Console

from onnxprune.bench import (
    BenchConfig,
    BenchResult,
    benchmark_model,
    benchmark_models,
    format_table,
    results_to_json,
)
from onnxprune.errors import InputError

FAST = {"warmup": 1, "runs": 3}


def _conv_model(batch: int | str = "N", h: int | str = 8, channels: int = 4) -> onnx.ModelProto:
    """Tiny CNN, shapes (batch, 3, h, h) -> (batch, channels, h, h).

        x ──Conv(3->C, 3x3, pad 1)──Relu──▶ y
    """
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((channels, 3, 3, 3))  # (C_out, C_in, kH, kW)
    w = helper.make_tensor("w", TensorProto.FLOAT, list(weights.shape), weights.ravel())
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, h, h])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, channels, h, h])
    graph = helper.make_graph(nodes, "tiny_cnn", [x], [y], initializer=[w])
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path)
    return path


def _cuda_really_available() -> bool:
    """A GPU device node exists (onnxruntime-gpu lists CUDA as available even without one)."""
    return os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl")


def test_results_count_fields_and_order(tmp_path: Path) -> None:
    path = _save(_conv_model(), tmp_path / "tiny.onnx")
    cfg = BenchConfig(batch_sizes=(1, 2), threads=1, **FAST)

    results = benchmark_model(path, cfg)

    assert [r.batch for r in results] == [1, 2]
    for r in results:
        assert isinstance(r, BenchResult)
        assert r.model == str(path)
        assert r.provider_requested == "cpu"
        assert r.provider_used == "CPUExecutionProvider"
        assert r.fell_back is False
        assert r.threads == 1
        assert r.runs == 3
        assert 0 < r.median_ms <= r.p90_ms <= r.p99_ms
        assert r.mean_ms > 0
    assert set(results[0].to_dict()) == {
        "model", "batch", "provider_requested", "provider_used", "fell_back", "threads",
        "median_ms", "p90_ms", "p99_ms", "mean_ms", "runs",
    }  # fmt: skip


def test_bytes_input_and_json(tmp_path: Path) -> None:
    results = benchmark_model(_conv_model().SerializeToString(), BenchConfig(**FAST))

    doc = results_to_json(results)

    assert len(results) == 1 and results[0].model == "<bytes>"
    doc = json.loads(json.dumps(doc))
    assert doc["results"] == [results[0].to_dict()]
    assert doc["schema_version"] == 1 and doc["tool"]["name"] == "onnxprune"
    assert doc["onnxruntime"]["version"] and doc["onnxruntime"]["providers_used"] == ["CPUExecutionProvider"]
    assert doc["machine"]["cpu"] and isinstance(doc["machine"]["gpus"], list)


def test_dynamic_batch_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(_conv_model(), tmp_path / "tiny.onnx")
    seen: list[tuple[int, ...]] = []

    real_run = ort.InferenceSession.run

    def spy(self: ort.InferenceSession, names: Any, feeds: dict, *args: Any, **kw: Any) -> Any:
        seen.append(feeds["x"].shape)
        return real_run(self, names, feeds, *args, **kw)

    monkeypatch.setattr(ort.InferenceSession, "run", spy)
    benchmark_model(path, BenchConfig(batch_sizes=(1, 4), warmup=0, runs=2))

    assert seen == [(1, 3, 8, 8)] * 2 + [(4, 3, 8, 8)] * 2


def test_fixed_batch_mismatch_raises(tmp_path: Path) -> None:
    path = _save(_conv_model(batch=2), tmp_path / "fixed.onnx")

    assert benchmark_model(path, BenchConfig(batch_sizes=(2,), **FAST))[0].batch == 2
    with pytest.raises(InputError, match="fixed batch of 2"):
        benchmark_model(path, BenchConfig(batch_sizes=(1,), **FAST))


def test_dynamic_spatial_dims_need_input_shape(tmp_path: Path) -> None:
    path = _save(_conv_model(h="H"), tmp_path / "dyn.onnx")

    with pytest.raises(InputError, match=r"--input-shape x:1x3x224x224") as info:
        benchmark_model(path, BenchConfig(**FAST))
    assert "\n" not in str(info.value)

    results = benchmark_model(path, BenchConfig(batch_sizes=(2,), **FAST), {"x": (1, 3, 5, 5)})
    assert results[0].batch == 2

    with pytest.raises(InputError, match="fixes it at 3"):
        benchmark_model(path, BenchConfig(**FAST), {"x": (1, 4, 5, 5)})
    with pytest.raises(InputError, match="unknown input"):
        benchmark_model(path, BenchConfig(**FAST), {"nope": (1, 3, 5, 5)})


@pytest.mark.parametrize(
    ("make_source", "message"),
    [
        (lambda tmp: tmp / "missing.onnx", "no such file"),
        (lambda tmp: tmp, "not a file"),
        (lambda tmp: _write(tmp / "garbage.onnx", b"\x00garbage\xff" * 10), "cannot load"),
        (lambda tmp: b"\x00garbage\xff" * 10, "cannot load"),
        (lambda tmp: _write(tmp / "text.onnx", b"hello, I am not a model\n"), "cannot load"),
    ],
    ids=["missing", "directory", "garbage-file", "garbage-bytes", "text-file"],
)
def test_bad_files_raise_input_error(
    tmp_path: Path, make_source: Callable[[Path], Path | bytes], message: str
) -> None:
    with pytest.raises(InputError, match=message) as info:
        benchmark_model(make_source(tmp_path), BenchConfig(**FAST))
    assert "\n" not in str(info.value)


def test_invalid_graph_raises_input_error(tmp_path: Path) -> None:
    """Valid protobuf, broken graph: Relu reads a tensor nobody produces."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    graph = helper.make_graph([helper.make_node("Relu", ["ghost"], ["y"])], "bad", [x], [y])
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])

    with pytest.raises(InputError, match="cannot load"):
        benchmark_model(_save(model, tmp_path / "bad.onnx"), BenchConfig(**FAST))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "kwargs",
    [{"provider": "tpu"}, {"batch_sizes": ()}, {"batch_sizes": (0,)}, {"runs": 0}, {"threads": -1}],
)
def test_bad_config_raises_input_error(kwargs: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(InputError):
        BenchConfig(**kwargs)


@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_gpu_request_falls_back_to_cpu(
    tmp_path: Path, provider: str, capfd: pytest.CaptureFixture[str]
) -> None:
    if _cuda_really_available():
        pytest.skip("a GPU is present: no fall back to observe")
    path = _save(_conv_model(), tmp_path / "tiny.onnx")

    (result,) = benchmark_model(path, BenchConfig(provider=provider, **FAST))

    assert result.provider_requested == provider
    assert result.provider_used == "CPUExecutionProvider"
    assert result.fell_back is True
    out, err = capfd.readouterr()
    assert "EP Error" not in out and "Failed to load library" not in err
    rendered = _render(format_table([result]))
    assert f"(fell back from {provider})" in rendered


def test_format_table_speedup_against_first_model() -> None:
    def result(model: str, batch: int, median: float) -> BenchResult:
        return BenchResult(
            model=model, batch=batch, provider_requested="cpu",
            provider_used="CPUExecutionProvider", fell_back=False, threads=0,
            median_ms=median, p90_ms=median, p99_ms=median, mean_ms=median, runs=3,
        )  # fmt: skip

    results = [
        result("/a/base.onnx", 1, 4.0),
        result("/a/base.onnx", 8, 20.0),
        result("/b/pruned.onnx", 1, 2.0),
        result("/b/pruned.onnx", 8, 8.0),
    ]

    table = format_table(results)

    assert table.row_count == 4
    columns = {c.header: list(c.cells) for c in table.columns}
    assert columns["model"] == ["base.onnx", "base.onnx", "pruned.onnx", "pruned.onnx"]
    assert columns["batch"] == ["1", "8", "1", "8"]
    assert columns["speed-up"] == ["1.00x", "1.00x", "2.00x", "2.50x"]
    assert columns["provider"] == ["CPUExecutionProvider"] * 4


def test_benchmark_models_two_real_models(tmp_path: Path) -> None:
    big = _save(_conv_model(channels=16), tmp_path / "big.onnx")
    small = _save(_conv_model(channels=4), tmp_path / "small.onnx")

    results = benchmark_models([big, small], BenchConfig(batch_sizes=(1, 2), **FAST))

    assert [(Path(r.model).name, r.batch) for r in results] == [
        ("big.onnx", 1), ("big.onnx", 2), ("small.onnx", 1), ("small.onnx", 2),
    ]  # fmt: skip
    speedups = [c for c in format_table(results).columns if c.header == "speed-up"][0]
    cells = list(speedups.cells)
    assert cells[:2] == ["1.00x", "1.00x"]
    for cell, r in zip(cells[2:], results[2:]):
        expected = results[results.index(r) - 2].median_ms / r.median_ms
        assert cell == f"{expected:.2f}x"


def _render(table: object) -> str:
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text()


def test_format_table_same_file_twice_uses_first_rows_as_baseline() -> None:
    def result(batch: int, median: float) -> BenchResult:
        return BenchResult(
            model="/a/m.onnx", batch=batch, provider_requested="cpu",
            provider_used="CPUExecutionProvider", fell_back=False, threads=0,
            median_ms=median, p90_ms=median, p99_ms=median, mean_ms=median, runs=3,
        )  # fmt: skip

    table = format_table([result(1, 2.0), result(4, 6.0), result(1, 1.0), result(4, 4.0)])

    speedups = [c for c in table.columns if c.header == "speed-up"][0]
    assert list(speedups.cells) == ["1.00x", "1.00x", "2.00x", "1.50x"]
