"""`load_dataset`: a data spec plus a model's input shape -> seeded train / val / test splits."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from onnxprune.data.lazy import ArraySource, FolderSource, ImageSource, LazyImages
from onnxprune.data.preprocess import ImageGeometry, check_stats, image_geometry
from onnxprune.data.sources import RawData, read_raw
from onnxprune.data.specs import DataSpec, parse_data_spec
from onnxprune.errors import DataError

Split = tuple["LazyImages | np.ndarray", np.ndarray]  # (x: float32 in the model's layout; y: int64)
EAGER_BYTES = 256 << 20  # a split preprocessed into memory at most (else it stays lazy)


@dataclass(frozen=True, eq=False)
class Splits:
    """Preprocessed data ready for a model.

    Attributes:
        train, val, test: (x, y) pairs; x is float32 in the model's layout and size, either a
            numpy array or a `LazyImages` (read, decoded and preprocessed only when indexed:
            `x[a:b]`, `x[idx]`; see `load_dataset`'s `lazy`), y is int64.
        num_classes: number of classes (from the dataset's class list, else max label + 1).
        layout: "nchw" or "nhwc", the layout of every x.
        spec: the canonical spec string the data came from.
        class_names: class names in label order, when the dataset has them.
        held_out_test: True when `test` is the dataset's own test set (e.g. Fashion-MNIST's
            t10k files), False when it was carved out of the same pool as train and val.
    """

    train: Split
    val: Split
    test: Split
    num_classes: int
    layout: str
    spec: str
    class_names: tuple[str, ...] | None = None
    held_out_test: bool = False

    def split(self, name: str) -> Split:
        """The split called `name` ("train", "val" or "test")."""
        if name not in ("train", "val", "test"):
            raise DataError(f"unknown split {name!r}: expected train, val or test")
        return getattr(self, name)


def _stratified_split(y: np.ndarray, fractions: Sequence[float], rng: np.random.Generator,
                      ) -> list[np.ndarray]:
    """Split indices of `y` class by class; returns one sorted index array per fraction plus
    the remainder first: [rest, part_0, part_1, ...]."""
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        start = 0
        for k, frac in enumerate(fractions):
            take = int(round(len(idx) * frac))
            parts[k + 1].append(idx[start:start + take])
            start += take
        parts[0].append(idx[start:])
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, dtype=np.int64) for p in parts]


def _stays_lazy(x: LazyImages, lazy: bool | None) -> bool:
    if lazy is not None:
        return lazy
    return isinstance(x.source, FolderSource) or len(x) * int(np.prod(x.shape[1:])) * 4 > EAGER_BYTES


def _source(x: np.ndarray | ImageSource, scale: float) -> ImageSource:
    return ArraySource(x, scale) if isinstance(x, np.ndarray) else x


def _cap(idx: np.ndarray, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    if limit is None or len(idx) <= limit:
        return idx
    return np.sort(rng.choice(idx, size=limit, replace=False))


def load_dataset(
    spec: str | DataSpec,
    *,
    input_shape: Sequence[object],
    layout: str = "auto",
    resize: tuple[int, int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    limit: int | None = None,
    lazy: bool | None = None,
) -> Splits:
    """Load the dataset named by `spec` and preprocess it for a model taking `input_shape`.

    Args:
        spec: a data spec string (see `parse_data_spec`) or a parsed `DataSpec`.
        input_shape: the model's input shape, e.g. (1, 1, 28, 28) or (1, 32, 32, 3); dynamic
            dimensions (None, strings, <= 0) keep the data's own size or channel count.
        layout: "auto" (from `input_shape`), "nchw" or "nhwc".
        resize: (H, W) to resize to instead of the model's H, W.
        mean, std: per-channel statistics applied after scaling pixels to [0, 1]; none by default
            (many exported models normalize inside the graph).
        seed: seed of the splits, of `limit`'s subsets and of `random` data.
        val_fraction: part of the training pool held out for validation (stratified by class).
        test_fraction: part held out for test, only for datasets without their own test set
            (digits, npz without x_test, folder without train/test, random).
        limit: cap every split at this many images (a seeded subset).
        lazy: True keeps every split lazy (`LazyImages`: images read, decoded and preprocessed
            only when indexed); False preprocesses everything into numpy arrays; None (default)
            is lazy for image folders and for any split whose preprocessed images would exceed
            `EAGER_BYTES`, else eager (small datasets are faster as arrays).

    Returns:
        `Splits` with train, val and test, read lazily: memory does not grow with the dataset
        (use `take` for subsets, `batches` / `loader` to stream them). The test split of a dataset that has one (Fashion-MNIST's
        t10k) is exactly that set and never overlaps train or val.

    Raises:
        DataError: bad spec, missing or unreadable dataset, impossible preprocessing.
    """
    parsed = parse_data_spec(spec)
    geometry = image_geometry(input_shape, layout)
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not 0.0 <= test_fraction < 1.0 or val_fraction + test_fraction >= 1.0:
        raise DataError(f"test_fraction must be in [0, 1) with val_fraction + test_fraction < 1, "
                        f"got {test_fraction} and {val_fraction}")
    if limit is not None and limit <= 0:
        raise DataError(f"limit must be positive, got {limit}")

    raw: RawData = read_raw(parsed, channels=geometry.channels, size=resize or geometry.size, seed=seed)
    if len(raw.x) == 0:
        raise DataError(f"data spec {parsed} holds no images")
    source = _source(raw.x, raw.scale)
    # Unknown (dynamic) channels or size: the first image's decide, for every split alike.
    c, h, w = source.item_shape(resize or geometry.size, geometry.channels)
    target = resize or geometry.size or (h, w)
    if min(target) <= 0:
        raise DataError(f"resize to {tuple(target)}: sizes must be positive")
    geometry = ImageGeometry(geometry.layout, geometry.channels or c, int(target[0]), int(target[1]))
    rng = np.random.default_rng(seed)
    if raw.test is not None:
        train_idx, val_idx = _stratified_split(raw.y, [val_fraction], rng)
        test_source = _source(raw.test[0], raw.scale)
        pools = {"train": (source, raw.y, train_idx), "val": (source, raw.y, val_idx),
                 "test": (test_source, raw.test[1], np.arange(len(raw.test[1])))}
    else:
        train_idx, val_idx, test_idx = _stratified_split(raw.y, [val_fraction, test_fraction], rng)
        pools = {"train": (source, raw.y, train_idx), "val": (source, raw.y, val_idx),
                 "test": (source, raw.y, test_idx)}

    out: dict[str, Split] = {}
    for name, (src, py, idx) in pools.items():
        idx = _cap(idx, limit, rng)
        x = LazyImages(src, idx, geometry, size=None, mean=mean, std=std)
        if not _stays_lazy(x, lazy):
            x = np.asarray(x)  # type: ignore[assignment]
        out[name] = (x, py[idx].astype(np.int64))
    check_stats(mean, geometry.channels)
    check_stats(std, geometry.channels, nonzero=True)

    if raw.class_names is not None:
        num_classes = len(raw.class_names)
    else:
        labels = [raw.y] + ([raw.test[1]] if raw.test is not None else [])
        num_classes = int(max(int(lbl.max()) for lbl in labels if len(lbl))) + 1
    return Splits(train=out["train"], val=out["val"], test=out["test"], num_classes=num_classes,
                  layout=geometry.layout, spec=str(parsed), class_names=raw.class_names,
                  held_out_test=raw.test is not None)


def batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (x, y) mini-batches; with `shuffle`, in a seeded random order."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} items but y has {len(y)}")
    n = len(x)
    order = np.random.default_rng(seed).permutation(n) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            yield x[start:start + batch_size], y[start:start + batch_size]
        else:
            idx = order[start:start + batch_size]
            yield x[idx], y[idx]
