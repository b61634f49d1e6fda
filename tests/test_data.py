"""Tests of onnxprune.data: specs, readers, preprocessing, splits."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from onnxprune.data import (DEFAULT_FASHION_MNIST_DIR, DataSpec, LazyImages, batches, image_geometry,
                            load_dataset, parse_data_spec, read_idx_file)
from onnxprune.errors import DataError, OnnxPruneError

HAVE_FASHION_MNIST = (DEFAULT_FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists() or (
    DEFAULT_FASHION_MNIST_DIR / "t10k-images-idx3-ubyte").exists()


# ------------------------------------------------------------------------------------------ specs


@pytest.mark.parametrize("text, expected", [
    ("digits", DataSpec("digits")),
    ("fashion-mnist", DataSpec("fashion-mnist", DEFAULT_FASHION_MNIST_DIR)),
    ("fashion-mnist:/data/fm", DataSpec("fashion-mnist", Path("/data/fm"))),
    ("idx:/data/mnist", DataSpec("idx", Path("/data/mnist"))),
    ("folder:/imgs", DataSpec("folder", Path("/imgs"))),
    ("npz:/a/b.npz", DataSpec("npz", Path("/a/b.npz"))),
    ("random", DataSpec("random", count=640)),
    ("random:50", DataSpec("random", count=50)),
])
def test_parse_data_spec(text: str, expected: DataSpec) -> None:
    spec = parse_data_spec(text)
    assert spec == expected
    assert parse_data_spec(str(spec)) == spec  # canonical string round-trips


@pytest.mark.parametrize("text", ["", "   ", "cifar10", "idx", "npz", "folder", "digits:x",
                                  "random:abc", "random:1", "fashion-mnist:", "npz:"])
def test_bad_spec_raises_data_error(text: str) -> None:
    with pytest.raises(DataError) as info:
        parse_data_spec(text)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, OnnxPruneError)


def test_bad_spec_in_load_dataset_raises_data_error() -> None:
    with pytest.raises(DataError, match="unknown data spec"):
        load_dataset("imagenet", input_shape=(1, 3, 32, 32))


# --------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("shape, layout, expected", [
    ((1, 1, 28, 28), "auto", ("nchw", 1, 28, 28)),
    ((1, 32, 32, 3), "auto", ("nhwc", 3, 32, 32)),
    (("N", 3, 224, 224), "auto", ("nchw", 3, 224, 224)),
    ((None, None, None, None), "auto", ("nchw", None, None, None)),
    ((1, 16, 16, 8), "nhwc", ("nhwc", 8, 16, 16)),
])
def test_image_geometry(shape: tuple, layout: str, expected: tuple) -> None:
    g = image_geometry(shape, layout)
    assert (g.layout, g.channels, g.height, g.width) == expected


@pytest.mark.parametrize("shape", [(1, 4, 32, 32), (1, 28, 28)])
def test_image_geometry_errors(shape: tuple) -> None:
    with pytest.raises(DataError):
        image_geometry(shape)


# ----------------------------------------------------------------------------------------- digits


def test_digits_splits() -> None:
    s = load_dataset("digits", input_shape=(1, 1, 28, 28))
    sizes = [len(s.train[0]), len(s.val[0]), len(s.test[0])]
    assert sum(sizes) == 1797
    assert sizes[1] == pytest.approx(0.1 * 1797, abs=10)
    assert sizes[2] == pytest.approx(0.2 * 1797, abs=10)
    assert s.num_classes == 10 and s.layout == "nchw" and not s.held_out_test
    for x, y in (s.train, s.val, s.test):
        assert x.shape[1:] == (1, 28, 28)
        assert x.dtype == np.float32 and y.dtype == np.int64
        xa = np.asarray(x)
        assert xa.min() >= 0.0 and xa.max() <= 1.0 + 1e-6
        assert set(np.unique(y)) == set(range(10))  # stratified: every class in every split


def test_digits_native_size_and_scaling() -> None:
    from sklearn.datasets import load_digits

    s = load_dataset("digits", input_shape=(None, None, None, None), val_fraction=0.0, test_fraction=0.0)
    x, y = s.train
    x = np.asarray(x)
    assert x.shape == (1797, 1, 8, 8)
    ref_x, ref_y = load_digits(return_X_y=True)
    np.testing.assert_allclose(x.reshape(1797, 64), ref_x / 16.0, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(y, ref_y)


def test_seeded_determinism() -> None:
    a = load_dataset("digits", input_shape=(1, 1, 8, 8), seed=3)
    b = load_dataset("digits", input_shape=(1, 1, 8, 8), seed=3)
    c = load_dataset("digits", input_shape=(1, 1, 8, 8), seed=4)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(a.split(name)[0], b.split(name)[0])
        np.testing.assert_array_equal(a.split(name)[1], b.split(name)[1])
    assert not np.array_equal(a.val[1], c.val[1]) or not np.array_equal(a.val[0], c.val[0])


def test_nhwc_layout_matches_nchw() -> None:
    nchw = load_dataset("digits", input_shape=(1, 1, 8, 8))
    nhwc = load_dataset("digits", input_shape=(1, 8, 8, 1))
    assert nhwc.layout == "nhwc"
    assert nhwc.train[0].shape[1:] == (8, 8, 1)
    np.testing.assert_array_equal(nhwc.train[0], np.asarray(nchw.train[0]).transpose(0, 2, 3, 1))
    rgb = load_dataset("digits", input_shape=(1, 12, 12, 3))
    assert rgb.train[0].shape[1:] == (12, 12, 3)
    assert rgb.train[0][:5].flags["C_CONTIGUOUS"]


def test_one_to_three_channels_repeats() -> None:
    s = load_dataset("digits", input_shape=(1, 3, 8, 8))
    x = s.train[0]
    assert x.shape[1] == 3
    np.testing.assert_array_equal(x[:, 0], x[:, 1])
    np.testing.assert_array_equal(x[:, 0], x[:, 2])


def test_resize_and_explicit_override() -> None:
    s = load_dataset("digits", input_shape=(1, 1, 32, 32))
    assert s.train[0].shape[1:] == (1, 32, 32)
    # Bilinear: mean intensity roughly preserved.
    native = load_dataset("digits", input_shape=(1, 1, 8, 8))
    assert abs(float(np.asarray(s.train[0]).mean()) - float(np.asarray(native.train[0]).mean())) < 0.02
    forced = load_dataset("digits", input_shape=(1, 1, 32, 32), resize=(16, 20))
    assert forced.train[0].shape[1:] == (1, 16, 20)


def test_mean_std() -> None:
    plain = load_dataset("digits", input_shape=(1, 3, 8, 8))
    norm = load_dataset("digits", input_shape=(1, 3, 8, 8), mean=(0.5, 0.4, 0.3), std=(0.25, 0.5, 1.0))
    expect = (np.asarray(plain.train[0]) - np.array([0.5, 0.4, 0.3], np.float32)[None, :, None, None]) / \
        np.array([0.25, 0.5, 1.0], np.float32)[None, :, None, None]
    np.testing.assert_allclose(norm.train[0], expect, rtol=1e-6, atol=1e-6)
    with pytest.raises(DataError, match="mean has 2 values"):
        load_dataset("digits", input_shape=(1, 3, 8, 8), mean=(0.5, 0.5))


def test_limit_caps_every_split() -> None:
    s = load_dataset("digits", input_shape=(1, 1, 8, 8), limit=50)
    assert [len(s.train[0]), len(s.val[0]), len(s.test[0])] == [50, 50, 50]


def test_random_spec_follows_model_input() -> None:
    s = load_dataset("random:40", input_shape=(1, 24, 20, 3), seed=1)
    assert s.train[0].shape[1:] == (24, 20, 3)
    assert sum(len(p[0]) for p in (s.train, s.val, s.test)) == 40
    again = load_dataset("random:40", input_shape=(1, 24, 20, 3), seed=1)
    np.testing.assert_array_equal(s.train[0], again.train[0])


# -------------------------------------------------------------------------------------------- npz


def test_npz_nhwc_uint8_with_test_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(30, 10, 12, 3), dtype=np.uint8)  # NHWC
    y = np.arange(30) % 3
    x_test = rng.integers(0, 256, size=(7, 10, 12, 3), dtype=np.uint8)
    y_test = np.arange(7) % 3
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test)
    s = load_dataset(f"npz:{path}", input_shape=(1, 3, 10, 12), val_fraction=0.2)
    assert s.held_out_test and s.num_classes == 3
    assert len(s.train[0]) + len(s.val[0]) == 30
    np.testing.assert_allclose(s.test[0], x_test.transpose(0, 3, 1, 2) / 255.0, atol=1e-6)
    np.testing.assert_array_equal(s.test[1], y_test)
    # 3 -> 1 channel averages.
    grey = load_dataset(f"npz:{path}", input_shape=(1, 1, 10, 12))
    np.testing.assert_allclose(grey.test[0][:, 0], x_test.mean(axis=3) / 255.0, atol=1e-5)


@pytest.mark.parametrize("shape", [(20, 9, 9), (20, 1, 9, 9), (20, 9, 9, 1)])
def test_npz_layouts(tmp_path: Path, shape: tuple) -> None:
    x = np.random.default_rng(1).random(shape, dtype=np.float32)
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=np.arange(20) % 2)
    s = load_dataset(f"npz:{path}", input_shape=(1, 1, 9, 9), val_fraction=0.0, test_fraction=0.0)
    np.testing.assert_allclose(np.asarray(s.train[0]).reshape(20, 81), x.reshape(20, 81), atol=1e-7)


def test_npz_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_dataset(f"npz:{tmp_path / 'missing.npz'}", input_shape=(1, 1, 8, 8))
    path = tmp_path / "bad.npz"
    np.savez(path, images=np.zeros((4, 8, 8)), labels=np.zeros(4))
    with pytest.raises(DataError, match="must hold arrays 'x' and 'y'"):
        load_dataset(f"npz:{path}", input_shape=(1, 1, 8, 8))


# ----------------------------------------------------------------------------------------- folder


def _write_folder(root: Path, colors: dict[str, tuple[int, int, int]], per_class: int) -> None:
    from PIL import Image

    for i, (name, color) in enumerate(colors.items()):
        (root / name).mkdir(parents=True)
        for j in range(per_class):
            size = (10 + j, 12 + i)  # images of different sizes
            Image.new("RGB", size, color).save(root / name / f"{j}.png")


def test_folder_spec(tmp_path: Path) -> None:
    _write_folder(tmp_path, {"blue": (0, 0, 255), "red": (255, 0, 0)}, per_class=10)
    (tmp_path / "notes.txt").write_text("ignored")
    s = load_dataset(f"folder:{tmp_path}", input_shape=(1, 3, 16, 16), val_fraction=0.2)
    assert s.class_names == ("blue", "red") and s.num_classes == 2
    x = np.concatenate([s.train[0], s.val[0], s.test[0]])
    y = np.concatenate([s.train[1], s.val[1], s.test[1]])
    assert x.shape == (20, 3, 16, 16)
    np.testing.assert_allclose(x[y == 0].mean(axis=(0, 2, 3)), [0, 0, 1], atol=1e-5)
    np.testing.assert_allclose(x[y == 1].mean(axis=(0, 2, 3)), [1, 0, 0], atol=1e-5)


def test_folder_with_train_test(tmp_path: Path) -> None:
    _write_folder(tmp_path / "train", {"a": (10, 10, 10), "b": (200, 200, 200)}, per_class=5)
    _write_folder(tmp_path / "test", {"a": (10, 10, 10), "b": (200, 200, 200)}, per_class=2)
    s = load_dataset(f"folder:{tmp_path}", input_shape=(1, 1, 8, 8), val_fraction=0.2)
    assert s.held_out_test and len(s.test[0]) == 4 and len(s.train[0]) + len(s.val[0]) == 10
    np.testing.assert_array_equal(s.test[1], [0, 0, 1, 1])


def test_folder_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_dataset(f"folder:{tmp_path / 'nope'}", input_shape=(1, 3, 8, 8))
    with pytest.raises(DataError, match="no class sub-folders"):
        load_dataset(f"folder:{tmp_path}", input_shape=(1, 3, 8, 8))


# -------------------------------------------------------------------------------------------- IDX


def _write_idx(path: Path, arr: np.ndarray) -> None:
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}[arr.dtype]
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    payload = header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def test_idx_spec(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    train_x = rng.integers(0, 256, (50, 6, 7), dtype=np.uint8)
    test_x = rng.integers(0, 256, (8, 6, 7), dtype=np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte", train_x)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", (np.arange(50) % 5).astype(np.uint8))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", test_x)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", (np.arange(8) % 5).astype(np.uint8))
    np.testing.assert_array_equal(read_idx_file(tmp_path / "t10k-images-idx3-ubyte.gz"), test_x)
    s = load_dataset(f"idx:{tmp_path}", input_shape=(1, 1, 6, 7))
    assert s.held_out_test and s.num_classes == 5
    np.testing.assert_allclose(s.test[0][:, 0], test_x / 255.0, atol=1e-6)
    assert len(s.train[0]) == 45 and len(s.val[0]) == 5


def test_idx_bad_file(tmp_path: Path) -> None:
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04garbage")
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x01\x02\x03\x04garbage")
    with pytest.raises(DataError, match="not an IDX file"):
        load_dataset(f"idx:{tmp_path}", input_shape=(1, 1, 6, 7))


def test_idx_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="IDX dataset not found"):
        load_dataset(f"idx:{tmp_path / 'none'}", input_shape=(1, 1, 28, 28))


# ---------------------------------------------------------------------------------- Fashion-MNIST


def test_missing_fashion_mnist_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset(f"fashion-mnist:{tmp_path / 'absent'}", input_shape=(1, 1, 28, 28))
    msg = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "fashion-mnist:DIR" in msg and str(tmp_path / "absent") in msg
    assert "\n" not in msg


@pytest.mark.skipif(not HAVE_FASHION_MNIST, reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_test_split_is_t10k() -> None:
    s = load_dataset("fashion-mnist", input_shape=(1, 1, 28, 28))
    assert s.held_out_test and s.num_classes == 10 and s.class_names[0] == "T-shirt/top"
    assert len(s.test[0]) == 10000
    assert len(s.train[0]) == 54000 and len(s.val[0]) == 6000
    t10k = next(p for p in sorted(DEFAULT_FASHION_MNIST_DIR.iterdir()) if p.name.startswith("t10k-images"))
    np.testing.assert_array_equal(np.rint(s.test[0][:, 0] * 255).astype(np.uint8), read_idx_file(t10k))
    # train + val is exactly the train file (as a multiset of images), so none of t10k is in them.
    train_file = next(p for p in sorted(DEFAULT_FASHION_MNIST_DIR.iterdir()) if p.name.startswith("train-images"))
    probe = np.random.default_rng(0).random(784)

    def fingerprints(x: np.ndarray) -> np.ndarray:
        return np.sort(x.reshape(len(x), -1).astype(np.float64) @ probe)

    pool = np.concatenate([s.train[0], s.val[0]])[:, 0] * 255
    np.testing.assert_allclose(fingerprints(np.rint(pool)), fingerprints(read_idx_file(train_file)), rtol=0,
                               atol=1e-6)
    assert set(np.bincount(s.val[1]).tolist()) == {600}  # stratified validation part


# ---------------------------------------------------------------------------------------- batches


def test_batches() -> None:
    x = np.arange(10, dtype=np.float32)[:, None]
    y = np.arange(10)
    out = list(batches(x, y, 4))
    assert [len(b[0]) for b in out] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in out]), y)
    a = [b[1].tolist() for b in batches(x, y, 4, shuffle=True, seed=5)]
    b = [b[1].tolist() for b in batches(x, y, 4, shuffle=True, seed=5)]
    assert a == b and sorted(sum(a, [])) == list(range(10)) and sum(a, []) != list(range(10))
    assert [len(b[0]) for b in batches(x, y, 4, drop_last=True)] == [4, 4]
    for xb, yb in batches(x, y, 3, shuffle=True):
        np.testing.assert_array_equal(xb[:, 0], yb)  # x and y stay paired
