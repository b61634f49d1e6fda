"""Streaming data and `--device`: lazy folders (counted decodes), grey-to-RGB per batch, the
loader's worker processes, capped uses through the CLI, and CUDA asked for without a GPU."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxprune.cli import main
from onnxprune.data import (DEFAULT_FASHION_MNIST_DIR, FolderSource, LazyImages, load_dataset, loader, take)
from onnxprune.errors import InputError
from tests.tiny import digits_model

HAVE_FASHION_MNIST = any(DEFAULT_FASHION_MNIST_DIR.glob("t10k-images*")) if DEFAULT_FASHION_MNIST_DIR.is_dir() else False


def _write_folder(root: Path, classes: int, per_class: int, mode: str = "RGB", size: tuple[int, int] = (12, 10)) -> int:
    """`classes` sub-folders of `per_class` small PNGs whose brightness encodes the class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c:02d}").mkdir(parents=True)
        for j in range(per_class):
            base = 20 + 20 * c
            arr = np.clip(base + rng.integers(-10, 10, size=(size[1], size[0], 3)), 0, 255).astype(np.uint8)
            img = Image.fromarray(arr, "RGB")
            (img.convert("L") if mode == "L" else img).save(root / f"class{c:02d}" / f"{j}.png")
    return classes * per_class


@pytest.fixture
def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts every image file decoded in this process (the loader runs with 0 workers here)."""
    seen: list[int] = []
    original = FolderSource.read

    def counting(self, idx, size, channels):
        seen.extend(int(i) for i in np.asarray(idx).reshape(-1))
        return original(self, idx, size, channels)

    monkeypatch.setattr(FolderSource, "read", counting)
    return seen


def test_folder_is_lazy_and_reads_only_what_is_indexed(tmp_path: Path, count_decodes: list[int]) -> None:
    total = _write_folder(tmp_path, classes=4, per_class=25)
    s = load_dataset(f"folder:{tmp_path}", input_shape=(1, 3, 16, 16), seed=0)
    x, y = s.train
    assert isinstance(x, LazyImages) and isinstance(x.source, FolderSource)
    assert count_decodes == []  # listing the folder decodes nothing
    assert x.shape == (len(y), 3, 16, 16) and len(x) + len(s.val[0]) + len(s.test[0]) == total
    xb = x[5:13]
    assert xb.shape == (8, 3, 16, 16) and xb.dtype == np.float32
    assert len(count_decodes) == 8
    sub = take(x, np.arange(0, len(x), 2))  # a view: nothing read
    assert len(count_decodes) == 8 and isinstance(sub, LazyImages)
    # brightness encodes the class: preprocessing really ran on the decoded pixels
    means = x[:][:, 0].mean(axis=(1, 2))
    assert np.all(np.diff([means[y == c].mean() for c in range(4)]) > 0.05)
    np.testing.assert_array_equal(np.asarray(s.val[0]), load_dataset(
        f"folder:{tmp_path}", input_shape=(1, 3, 16, 16), seed=0, lazy=False).val[0])


def test_cli_caps_bound_the_images_decoded(tmp_path: Path, count_decodes: list[int]) -> None:
    """Taylor + BatchNorm re-estimation + one fine-tune epoch on a folder of 400 images read
    at most calib + finetune + a few val passes of images, never the whole folder."""
    _, model = digits_model()
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    total = _write_folder(tmp_path / "data", classes=10, per_class=40)
    out = tmp_path / "p.onnx"
    code = main(["prune", str(src), "-o", str(out), "--method", "taylor", "--target-flops", "0.6",
                 "--data", f"folder:{tmp_path / 'data'}", "--calib-images", "16", "--finetune-epochs", "1",
                 "--finetune-images", "24", "--eval-images", "12", "--data-workers", "0", "--device", "cpu"])
    assert code == 0 and out.exists()
    # calib passes: Taylor; BatchNorm re-estimation (the unpruned model's statistics, the
    # re-estimation, its write-back check); fine-tune's BatchNorm re-insertion. val passes: before
    # and after the epoch, and the fine-tune write-back check. Each pass re-reads its images.
    calib, finetune, calib_passes, val_passes = 16, 24, 5, 3
    assert len(count_decodes) <= calib_passes * calib + finetune + val_passes * 12
    assert len(set(count_decodes)) < total // 4  # distinct files: a small part of the folder


def test_grey_to_rgb_per_batch(tmp_path: Path) -> None:
    _write_folder(tmp_path, classes=2, per_class=6, mode="L", size=(9, 7))
    s = load_dataset(f"folder:{tmp_path}", input_shape=(1, 3, 20, 20), val_fraction=0.0, test_fraction=0.0)
    xb = s.train[0][:5]
    assert xb.shape == (5, 3, 20, 20)
    np.testing.assert_array_equal(xb[:, 0], xb[:, 1])
    np.testing.assert_array_equal(xb[:, 0], xb[:, 2])
    # digits (grey arrays) the same way, lazily: equal to the eager path, NHWC too
    lazy = load_dataset("digits", input_shape=(1, 24, 24, 3), lazy=True)
    eager = load_dataset("digits", input_shape=(1, 24, 24, 3), lazy=False)
    assert isinstance(lazy.train[0], LazyImages) and isinstance(eager.train[0], np.ndarray)
    np.testing.assert_array_equal(lazy.train[0][10:20], eager.train[0][10:20])
    assert lazy.train[0][:3].shape == (3, 24, 24, 3)
    np.testing.assert_array_equal(lazy.train[0][:3][..., 0], lazy.train[0][:3][..., 2])


@pytest.mark.skipif(not HAVE_FASHION_MNIST, reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_at_224_rgb_streams() -> None:
    """The reported failure: the whole split resized to (54000, 3, 224, 224) float32 (30 GiB)."""
    s = load_dataset("fashion-mnist", input_shape=(1, 3, 224, 224))
    x, y = s.train
    assert isinstance(x, LazyImages) and x.shape == (54000, 3, 224, 224) and len(y) == 54000
    xb = x[np.array([3, 70, 12000])]
    assert xb.shape == (3, 3, 224, 224)
    np.testing.assert_array_equal(xb[:, 0], xb[:, 2])
    small = load_dataset("fashion-mnist", input_shape=(1, 1, 28, 28))
    assert isinstance(small.train[0], np.ndarray)  # 169 MB: preprocessed once, as before
    assert abs(float(xb.mean()) - float(small.train[0][[3, 70, 12000]].mean())) < 0.02


def test_loader_workers_match_in_process(tmp_path: Path) -> None:
    _write_folder(tmp_path, classes=3, per_class=10)
    x, y = load_dataset(f"folder:{tmp_path}", input_shape=(1, 3, 8, 8), val_fraction=0.0, test_fraction=0.0).train
    a = list(loader(x, y, 7, shuffle=True, seed=4, limit=20, workers=0))
    b = list(loader(x, y, 7, shuffle=True, seed=4, limit=20, workers=2))
    assert [len(i) for i, _, _ in a] == [7, 7, 6]
    for (ia, xa, ya), (ib, xb, yb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(ya, y[ia])
    order = np.array([5, 1, 9])
    assert [i.tolist() for i, _, _ in loader(x, y, 2, order=order, workers=0)] == [[5, 1], [9]]


def test_lazy_validation_scores_equal_eager() -> None:
    from onnxprune.deps import analyze
    from onnxprune.search import EvalConfig, LocalEvaluator
    from onnxprune.torchcopy import to_torch

    _, model = digits_model()
    analysis = analyze(model)
    cfg = EvalConfig(images=100, bn_batches=2, bn_batch_size=32)
    keeps = [analysis.full_keep()]
    keep = analysis.full_keep()
    keep[analysis.prunable()[0].unit_slice.start] = False
    keeps.append(keep)
    scores = []
    for lazy in (False, True):
        splits = load_dataset("digits", input_shape=(1, 1, 8, 8), seed=0, lazy=lazy)
        with LocalEvaluator(analysis, to_torch(analysis), splits, cfg) as ev:
            scores.append(ev.evaluate(keeps) + ev.evaluate(keeps, images=0))
    assert scores[0] == scores[1]


# ----------------------------------------------------------------------------------------- device


def test_device_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from onnxprune.torchcopy import device as dev

    assert dev.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(dev, "cuda_available", lambda: False)
    assert dev.resolve_device("auto") == torch.device("cpu")
    for spec in ("cuda", "cuda:0", "CUDA:1"):
        with pytest.raises(InputError, match="torch sees no CUDA GPU"):
            dev.resolve_device(spec)
    with pytest.raises(InputError, match="expected auto, cpu, cuda or cuda:N"):
        dev.resolve_device("tpu")
    monkeypatch.setattr(dev, "cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert dev.resolve_device("auto") == torch.device("cuda")
    assert dev.resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(InputError, match=r"sees 1 GPU\(s\)"):
        dev.resolve_device("cuda:1")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("argv", [
    ["prune", "{src}", "-o", "{out}", "--method", "taylor", "--target-flops", "0.5", "--data", "digits",
     "--device", "cuda"],
    ["prune", "{src}", "-o", "{out}", "--method", "l1", "--target-flops", "0.5", "--device", "cuda:0"],
    ["finetune", "{src}", "--teacher", "{src}", "--data", "digits", "-o", "{out}", "--device", "cuda"],
])
def test_cuda_without_gpu_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    _, model = digits_model()
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    out = tmp_path / "p.onnx"
    code = main([a.format(src=src, out=out) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "no CUDA GPU" in err and "Traceback" not in err
    assert not out.exists()


def test_batch_size_fits_activation_memory() -> None:
    from onnxprune.deps import analyze
    from onnxprune.torchcopy.device import INFER_LIVE, activation_bytes, fit_batch_size, largest_activation_bytes

    _, model = digits_model()
    analysis = analyze(model)
    per_image = activation_bytes(analysis)
    assert per_image > 16 * 8 * 8 * 4  # at least the stem's output
    assert fit_batch_size(analysis, 64, training=True) == 64  # tiny model: the default stands
    assert fit_batch_size(analysis, 64, training=True, budget=per_image * 2 * 10) == 10
    assert fit_batch_size(analysis, 64, training=True, budget=1) == 2
    largest = largest_activation_bytes(analysis)
    assert 0 < largest < per_image
    # inference: the few tensors alive around the largest activation, not all of them
    assert fit_batch_size(analysis, 512, training=False, budget=int(largest * INFER_LIVE * 7)) == 7


def test_default_workers_follow_the_device(tmp_path: Path) -> None:
    from onnxprune.data import default_workers

    _write_folder(tmp_path, classes=2, per_class=3)
    x, _ = load_dataset(f"folder:{tmp_path}", input_shape=(1, 3, 8, 8), seed=0).train
    assert isinstance(x, LazyImages)
    assert default_workers(x, "cpu") == 0  # the model's own cores: decoding in this process
    assert default_workers(x, "cuda:0") == default_workers(x) == max(0, min(2, (os.cpu_count() or 1) - 1))
    assert default_workers(np.zeros((4, 3, 8, 8), np.float32), "cuda") == 0  # arrays: no process hop


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_layer_moments_in_chunks_match_and_leave_the_output(monkeypatch: pytest.MonkeyPatch, dtype: str) -> None:
    import torch

    from onnxprune.torchcopy import batchnorm

    out = torch.randn(5, 3, 4, 6, dtype=getattr(torch, dtype)) * 3 + 1
    before = out.clone()
    flat = out.transpose(0, 1).reshape(3, -1).double()
    monkeypatch.setattr(batchnorm, "_MOMENT_CHUNK", 2 * 3 * 4 * 6)  # 2 images per chunk: 3 chunks
    s, sq, n = batchnorm._moments(out)  # noqa: SLF001
    assert n == 5 * 4 * 6
    assert torch.allclose(s, flat.sum(1), rtol=1e-12, atol=1e-9)
    assert torch.allclose(sq, (flat * flat).sum(1), rtol=1e-12, atol=1e-9)
    assert torch.equal(out, before)  # the layer's output is not touched (float64 included)
