"""Readers that turn a `DataSpec` into raw images and labels, before any preprocessing.

Every reader returns a `RawData`: images as an (N, C, H, W) array in their stored dtype together
with the value that stands for full intensity (`scale`: 255 for 8-bit images, 16 for digits, 1 for
floats already in [0, 1]), int64 labels, and the dataset's own test split where it has one.
Nothing here downloads anything: a missing dataset raises `DataError` naming what provides it.
"""

from __future__ import annotations

import functools
import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxprune.data.lazy import FolderSource, ImageSource, RandomSource
from onnxprune.data.specs import DataSpec
from onnxprune.errors import DataError

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FASHION_MNIST_APT_HINT = "apt-get install dataset-fashion-mnist"
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)

# IDX element types (http://yann.lecun.com/exdb/mnist/ file format), big-endian on disk.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclass(frozen=True, eq=False)
class RawData:
    """Images and labels as stored, before splitting and preprocessing.

    Attributes:
        x: (N, C, H, W) images in their stored dtype (an array, possibly memory-mapped), or an
            `ImageSource` that decodes them on demand (image folders, random data).
        y: (N,) int64 labels.
        scale: the stored value of full intensity (x / scale lies in [0, 1]).
        test: the dataset's own held-out test split (x, y) with the same layout and scale, or None.
        class_names: names of the classes in label order, when the dataset has them.
    """

    x: np.ndarray | ImageSource
    y: np.ndarray
    scale: float
    test: tuple[np.ndarray | ImageSource, np.ndarray] | None = None
    class_names: tuple[str, ...] | None = None


def read_raw(
    spec: DataSpec,
    *,
    channels: int | None = None,
    size: tuple[int, int] | None = None,
    seed: int = 0,
) -> RawData:
    """Read the dataset named by `spec`.

    Args:
        spec: a parsed data spec.
        channels: the model's channel count, used only by `random` (None: 3).
        size: (H, W) of the images `random` draws (folders are resized while decoding, later).
        seed: seed of `random`.
    """
    if spec.kind == "digits":
        return _read_digits()
    if spec.kind == "fashion-mnist":
        assert spec.path is not None
        return _read_idx_dir(spec.path, fashion=True)
    if spec.kind == "idx":
        assert spec.path is not None
        return _read_idx_dir(spec.path, fashion=False)
    if spec.kind == "npz":
        assert spec.path is not None
        return _read_npz(spec.path)
    if spec.kind == "folder":
        assert spec.path is not None
        return _read_folder(spec.path)
    if spec.kind == "random":
        return _make_random(spec.count or 640, channels=channels or 3, size=size or (32, 32), seed=seed)
    raise DataError(f"unknown data kind {spec.kind!r}")


# --------------------------------------------------------------------------------------- digits


def _read_digits() -> RawData:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError(
            "the digits dataset comes with scikit-learn, which is not installed: "
            "pip install 'onnxprune[data]' (or scikit-learn)"
        ) from None
    images, labels = load_digits(return_X_y=True)  # (1797, 64) floats 0..16
    x = images.astype(np.float32).reshape(-1, 1, 8, 8)  # (N, 1, 8, 8)
    return RawData(x=x, y=labels.astype(np.int64), scale=16.0,
                   class_names=tuple(str(i) for i in range(10)))


# ------------------------------------------------------------------------------------------ IDX


def read_idx_file(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a read-only numpy array in native byte order.

    Raises:
        DataError: the file is not a valid IDX file.
    """
    path = Path(path)
    stat = path.stat()
    return _read_idx_cached(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _read_idx_cached(path: str, mtime_ns: int, size: int) -> np.ndarray:
    del mtime_ns, size  # cache keys only: a rewritten file is read again
    if not path.endswith(".gz"):
        mapped = _map_idx(path)
        if mapped is not None:
            return mapped
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DataError(f"{path} is not an IDX file (truncated header)")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    count = int(np.prod(dims))
    if len(data) - header < count * dtype.itemsize:
        raise DataError(f"{path} is truncated: header says {dims} but the data is shorter")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    arr = arr.astype(dtype.newbyteorder("="), copy=True)
    arr.flags.writeable = False
    return arr


def _map_idx(path: str) -> np.ndarray | None:
    """An uncompressed 8-bit IDX file as a read-only memory map (pages are read when used, so
    a large file costs no memory up front); None for other element types or odd headers."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in (0x08, 0x09):
                return None
            ndim = head[3]
            dims_raw = f.read(4 * ndim)
        if ndim == 0 or len(dims_raw) < 4 * ndim:
            return None
        dims = tuple(int(d) for d in np.frombuffer(dims_raw, dtype=">u4"))
        if os.path.getsize(path) - (4 + 4 * ndim) < int(np.prod(dims)):
            return None
        return np.memmap(path, dtype=_IDX_DTYPES[head[2]], mode="r", offset=4 + 4 * ndim, shape=dims)
    except OSError:
        return None


def _find_idx(directory: Path, split: str, what: str) -> Path | None:
    """Find e.g. `train-images-idx3-ubyte[.gz]` or `train-images.idx3-ubyte` in `directory`."""
    prefixes = ("train",) if split == "train" else ("t10k", "test")
    candidates = []
    for entry in sorted(directory.iterdir()):
        name = entry.name.lower()
        if not entry.is_file() or "idx" not in name:
            continue
        for prefix in prefixes:
            if name.startswith(f"{prefix}-{what}") or name.startswith(f"{prefix}_{what}"):
                candidates.append(entry)
    # Prefer uncompressed files (faster), then the shortest name.
    candidates.sort(key=lambda p: (p.suffix == ".gz", len(p.name)))
    return candidates[0] if candidates else None


def _idx_images_to_nchw(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.ndim == 3:  # (N, H, W)
        return arr[:, None, :, :]
    if arr.ndim == 4 and arr.shape[-1] in (1, 3, 4):  # (N, H, W, C)
        return arr.transpose(0, 3, 1, 2)
    raise DataError(f"{path}: expected images of shape (N, H, W) or (N, H, W, C), got {arr.shape}")


def _read_idx_dir(directory: Path, *, fashion: bool) -> RawData:
    name = "Fashion-MNIST" if fashion else "IDX dataset"
    hint = (f"install it with `{FASHION_MNIST_APT_HINT}` or pass fashion-mnist:DIR" if fashion
            else "expected train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz] "
                 "(and optionally t10k-*) there")
    if not directory.is_dir():
        raise DataError(f"{name} not found at {directory}: {hint}")
    train_x_path = _find_idx(directory, "train", "images")
    train_y_path = _find_idx(directory, "train", "labels")
    if train_x_path is None or train_y_path is None:
        raise DataError(f"{name} not found at {directory} (no train-images/train-labels IDX files): {hint}")
    x = _idx_images_to_nchw(read_idx_file(train_x_path), train_x_path)
    y = read_idx_file(train_y_path).astype(np.int64)
    _check_pair(x, y, train_x_path)

    test = None
    test_x_path = _find_idx(directory, "test", "images")
    test_y_path = _find_idx(directory, "test", "labels")
    if test_x_path is not None and test_y_path is not None:
        tx = _idx_images_to_nchw(read_idx_file(test_x_path), test_x_path)
        ty = read_idx_file(test_y_path).astype(np.int64)
        _check_pair(tx, ty, test_x_path)
        if tx.shape[1:] != x.shape[1:]:
            raise DataError(f"{test_x_path}: test images {tx.shape[1:]} differ from train images {x.shape[1:]}")
        test = (tx, ty)
    elif fashion:
        raise DataError(f"Fashion-MNIST at {directory} lacks the t10k test files: {hint}")

    scale = 255.0 if np.issubdtype(x.dtype, np.integer) else 1.0
    return RawData(x=x, y=y, scale=scale, test=test,
                   class_names=FASHION_MNIST_CLASSES if fashion else None)


def _check_pair(x: np.ndarray, y: np.ndarray, path: Path) -> None:
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{path}: {len(x)} images but labels of shape {y.shape}")
    if len(y) and y.min() < 0:
        raise DataError(f"{path}: negative labels")


# ------------------------------------------------------------------------------------------ npz


def _npz_images_to_nchw(x: np.ndarray, where: str) -> np.ndarray:
    """Accept (N, H, W), (N, C, H, W) or (N, H, W, C) with C in 1, 3 (4 = RGBA, alpha dropped)."""
    if x.ndim == 3:  # (N, H, W)
        return x[:, None, :, :]
    if x.ndim != 4:
        raise DataError(f"{where}: expected images (N, H, W), (N, C, H, W) or (N, H, W, C), got {x.shape}")
    c_first, c_last = x.shape[1] in (1, 3, 4), x.shape[3] in (1, 3, 4)
    if c_first and c_last:  # e.g. (N, 3, 4, 3): trust the square spatial dims
        c_last = x.shape[1] == x.shape[2] and x.shape[2] != x.shape[3]
        c_first = not c_last
    if c_last:
        x = x.transpose(0, 3, 1, 2)
    elif not c_first:
        raise DataError(f"{where}: cannot find the channel axis of images shaped {x.shape} "
                        "(expected 1, 3 or 4 channels first or last)")
    return x[:, :3] if x.shape[1] == 4 else x


def _npz_labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[0] == n and y.shape[1] > 1:  # one-hot
        y = y.argmax(axis=1)
    y = np.asarray(y).reshape(-1) if y.ndim == 2 and 1 in y.shape else y
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{where}: {n} images but labels of shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.mod(y, 1) == 0):
            raise DataError(f"{where}: labels must be integers")
    y = y.astype(np.int64)
    if n and y.min() < 0:
        raise DataError(f"{where}: negative labels")
    return y


def _read_npz(path: Path) -> RawData:
    if not path.is_file():
        raise DataError(f"npz file not found: {path} (expected a .npz with arrays 'x' and 'y')")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path} as .npz: {exc}") from None
    for xk, yk in (("x", "y"), ("x_train", "y_train")):
        if xk in arrays and yk in arrays:
            break
    else:
        raise DataError(f"{path} must hold arrays 'x' and 'y' (or 'x_train' and 'y_train'); "
                        f"found {sorted(arrays)}")
    x = _npz_images_to_nchw(arrays[xk], f"{path}:{xk}")
    y = _npz_labels(arrays[yk], len(x), f"{path}:{yk}")
    test = None
    if "x_test" in arrays and "y_test" in arrays:
        tx = _npz_images_to_nchw(arrays["x_test"], f"{path}:x_test")
        ty = _npz_labels(arrays["y_test"], len(tx), f"{path}:y_test")
        if tx.shape[1:] != x.shape[1:]:
            raise DataError(f"{path}: x_test images {tx.shape[1:]} differ from {xk} images {x.shape[1:]}")
        test = (tx, ty)
    if x.dtype == np.bool_:
        x = x.astype(np.uint8)
        test = (test[0].astype(np.uint8), test[1]) if test else None
        scale = 1.0
    elif np.issubdtype(x.dtype, np.integer):
        scale = 1.0 if x.size and x.max() <= 1 else 255.0
    else:
        scale = 255.0 if x.size and float(np.nanmax(x)) > 1.0 + 1e-6 else 1.0
    return RawData(x=x, y=y, scale=scale, test=test)


# --------------------------------------------------------------------------------------- folder


def _class_dirs(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


def _class_tree(directory: Path, classes: list[str]) -> tuple[FolderSource, np.ndarray]:
    """The image files under `directory`/<class>/ (not decoded) and their labels."""
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        class_dir = directory / name
        found = _image_files(class_dir) if class_dir.is_dir() else []
        files += found
        labels += [label] * len(found)
    if not files:
        raise DataError(f"no images found under {directory} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return FolderSource(files), np.asarray(labels, dtype=np.int64)


def _read_folder(directory: Path) -> RawData:
    """List an image folder; files are decoded only when a batch needs them (`FolderSource`)."""
    if not directory.is_dir():
        raise DataError(f"image folder not found: {directory} (expected one sub-folder per class)")
    train_dir, test_dir = directory / "train", directory / "test"
    split_layout = train_dir.is_dir() and test_dir.is_dir()
    root = train_dir if split_layout else directory
    classes = [p.name for p in _class_dirs(root)]
    if not classes:
        raise DataError(f"{root} has no class sub-folders: expected one sub-folder of images per class")
    x, y = _class_tree(root, classes)
    test = None
    if split_layout:
        extra = sorted({p.name for p in _class_dirs(test_dir)} - set(classes))
        if extra:
            raise DataError(f"{test_dir} has classes missing from {train_dir}: {', '.join(extra)}")
        test = _class_tree(test_dir, classes)
    return RawData(x=x, y=y, scale=255.0, test=test, class_names=tuple(classes))


# --------------------------------------------------------------------------------------- random


def _make_random(count: int, *, channels: int, size: tuple[int, int], seed: int,
                 num_classes: int = 10) -> RawData:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, size=count).astype(np.int64)
    return RawData(x=RandomSource(count, channels, size, seed), y=y, scale=1.0,
                   class_names=tuple(str(i) for i in range(num_classes)))
