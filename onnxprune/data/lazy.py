"""Lazily read images: sources that decode on demand, and `LazyImages`, an array-like view that
preprocesses only the images a batch asks for.

A split of a dataset (`onnxprune.data.load_dataset`) is `(LazyImages, labels)`. Indexing a
`LazyImages` (`x[10:74]`, `x[idx]`, `x[idx, 0]`) reads, decodes and preprocesses exactly those
images and returns a float32 numpy array in the model's layout; nothing else is kept in memory.
Labels are a plain int64 array (they are small and the splits need all of them).

    >>> x, y = load_dataset("folder:/data/imagenet", input_shape=(1, 3, 224, 224)).train
    >>> xb = x[:32]                                   # decodes 32 files, float32 (32, 3, 224, 224)
    >>> sub = take(x, np.arange(1000))                # a lazy view of 1,000 images, nothing decoded
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from onnxprune.data.preprocess import ImageGeometry, preprocess
from onnxprune.errors import DataError

_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
_CHUNK = 256  # images materialized at a time by `np.asarray(lazy)`


class ImageSource(Protocol):
    """Raw images read on demand.

    `read(idx, size, channels)` returns (n, C, H, W) images in the stored dtype (`x / scale` in
    [0, 1]); `size` and `channels` are hints a decoder may apply while decoding (a folder resizes
    each file to `size` and converts it to `channels`), array sources ignore them.
    """

    scale: float

    def __len__(self) -> int: ...

    def read(self, idx: np.ndarray, size: tuple[int, int] | None, channels: int | None) -> np.ndarray: ...

    def item_shape(self, size: tuple[int, int] | None, channels: int | None) -> tuple[int, int, int]:
        """(C, H, W) of what `read` returns for these hints."""
        ...


class ArraySource:
    """Images held in an (N, C, H, W) array (possibly a read-only memory map of a file)."""

    def __init__(self, x: np.ndarray, scale: float) -> None:
        if x.ndim != 4:
            raise DataError(f"images must be (N, C, H, W), got shape {x.shape}")
        self.x = x
        self.scale = float(scale)

    def __len__(self) -> int:
        return len(self.x)

    def read(self, idx: np.ndarray, size: tuple[int, int] | None, channels: int | None) -> np.ndarray:
        del size, channels  # preprocessing resizes and converts
        return np.asarray(self.x[idx])

    def item_shape(self, size: tuple[int, int] | None, channels: int | None) -> tuple[int, int, int]:
        del size, channels
        return tuple(int(d) for d in self.x.shape[1:])  # type: ignore[return-value]


class FolderSource:
    """Image files (JPEG, PNG, ...) decoded with Pillow when a batch asks for them.

    `decoded` counts the files decoded so far in this process (tests use it to check laziness).
    Grey files become 1 channel and colour files 3 (alpha dropped); when `channels` is asked for,
    grey is repeated to 3 and colour averaged to 1, as `convert_channels` does.
    """

    scale = 255.0

    def __init__(self, files: Sequence[Path]) -> None:
        self.files = tuple(files)
        self.decoded = 0
        self._peeked: tuple[int, int, int] | None = None

    def __len__(self) -> int:
        return len(self.files)

    def _open(self, path: Path) -> Any:
        try:
            from PIL import Image
        except ImportError:
            raise DataError("folder:DIR needs Pillow to read images: pip install pillow") from None
        try:
            img = Image.open(path)
            img.load()
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read image {path}: {exc}") from None
        return img

    def _peek(self) -> tuple[int, int, int]:
        """(C, H, W) of the first file as stored (C: 1 grey, 3 colour)."""
        if self._peeked is None:
            if not self.files:
                raise DataError("the image folder holds no images")
            with self._open(self.files[0]) as img:
                self._peeked = (1 if img.mode in _GRAY_MODES else 3, img.height, img.width)
        return self._peeked

    def item_shape(self, size: tuple[int, int] | None, channels: int | None) -> tuple[int, int, int]:
        c, h, w = self._peek()
        if size is not None:
            h, w = size
        return (channels or c, h, w)

    def read(self, idx: np.ndarray, size: tuple[int, int] | None, channels: int | None) -> np.ndarray:
        from PIL import Image

        c, h, w = self.item_shape(size, channels)
        out = np.empty((len(idx), c, h, w), dtype=np.float32)  # (n, C, H, W), 0..255
        for k, i in enumerate(np.asarray(idx, dtype=np.int64).reshape(-1)):
            path = self.files[int(i)]
            with self._open(path) as img:
                grey = img.mode in _GRAY_MODES
                img = img.convert("L" if grey else "RGB")
                if (img.height, img.width) != (h, w):
                    img = img.resize((w, h), Image.Resampling.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)  # (H, W) or (H, W, 3)
            self.decoded += 1
            if arr.ndim == 2:
                out[k] = arr[None] if c == 1 else np.broadcast_to(arr[None], (c, h, w))
            elif c == 3:
                out[k] = arr.transpose(2, 0, 1)
            else:  # colour file, 1-channel model: average like convert_channels
                out[k] = arr.mean(axis=2, dtype=np.float32)[None]
        return out


class RandomSource:
    """Seeded gaussian images, each drawn from its own seed (so any subset is cheap)."""

    scale = 1.0

    def __init__(self, count: int, channels: int, size: tuple[int, int], seed: int) -> None:
        self.count, self.channels, self.size, self.seed = count, channels, size, seed

    def __len__(self) -> int:
        return self.count

    def item_shape(self, size: tuple[int, int] | None, channels: int | None) -> tuple[int, int, int]:
        del size, channels
        return (self.channels, *self.size)

    def read(self, idx: np.ndarray, size: tuple[int, int] | None, channels: int | None) -> np.ndarray:
        del size, channels
        shape = (self.channels, *self.size)
        out = np.empty((len(idx), *shape), dtype=np.float32)
        for k, i in enumerate(np.asarray(idx, dtype=np.int64).reshape(-1)):
            rng = np.random.default_rng([self.seed, int(i)])
            out[k] = rng.normal(0.5, 0.25, size=shape).clip(0.0, 1.0)
        return out


class LazyImages:
    """An array-like, read-only view of preprocessed images: `len`, `shape`, `dtype`, `ndim` and
    numpy-style indexing (int, slice, int or bool array, optionally followed by more indices)
    that returns float32 numpy arrays of just the selected images. `np.asarray(view)` reads
    everything (avoid it on large datasets; `take` makes smaller views)."""

    dtype = np.dtype(np.float32)
    ndim = 4

    def __init__(self, source: ImageSource, indices: np.ndarray, geometry: ImageGeometry,
                 size: tuple[int, int] | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        self.indices.flags.writeable = False
        self.geometry = geometry
        self.size = size
        self.mean = mean
        self.std = std
        target = size if size is not None else geometry.size
        c, h, w = source.item_shape(target, geometry.channels)
        h, w = target if target is not None else (h, w)
        c = geometry.channels or c
        self._item = (c, h, w) if geometry.layout == "nchw" else (h, w, c)
        self._target = (int(h), int(w))

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.indices), *self._item)

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return f"LazyImages(shape={self.shape}, source={type(self.source).__name__})"

    def _read(self, idx: np.ndarray) -> np.ndarray:
        """Preprocessed images at source positions `idx`: float32 (n, *item)."""
        if len(idx) == 0:
            return np.zeros((0, *self._item), dtype=np.float32)
        raw = self.source.read(idx, self._target, self.geometry.channels)  # (n, C, H, W)
        return preprocess(raw, scale=self.source.scale, geometry=self.geometry, size=self._target,
                          mean=self.mean, std=self.std)

    def view(self, key: Any) -> "LazyImages":
        """A lazy view of the images selected by `key` (slice, int or bool array)."""
        sel = self.indices[key]
        return LazyImages(self.source, np.atleast_1d(sel), self.geometry, self.size, self.mean, self.std)

    def __getitem__(self, key: Any) -> np.ndarray:
        rest: tuple[Any, ...] = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if isinstance(key, (int, np.integer)):
            out = self._read(self.indices[[int(key)]])[0]
            return out[rest] if rest else out
        if key is Ellipsis:
            key = slice(None)
        out = self._read(self.indices[key])
        return out[(slice(None), *rest)] if rest else out

    def __iter__(self):  # noqa: ANN204 - like iterating an array: one image at a time
        for start in range(0, len(self), _CHUNK):
            yield from self[start:start + _CHUNK]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.empty(self.shape, dtype=np.float32)
        for start in range(0, len(self), _CHUNK):
            out[start:start + _CHUNK] = self[start:start + _CHUNK]
        return out if dtype is None else out.astype(dtype)


def take(x: np.ndarray | LazyImages, idx: np.ndarray | slice) -> np.ndarray | LazyImages:
    """`x[idx]` without reading anything when `x` is lazy (a smaller lazy view); for numpy
    arrays the usual (copying) indexing."""
    if isinstance(x, LazyImages):
        return x.view(idx)
    return x[idx]


def calibration_sample(x: np.ndarray | LazyImages, count: int, seed: int) -> np.ndarray | LazyImages:
    """The `count` images (all when fewer) that BatchNorm statistics are re-estimated on, for
    `seed`: a seeded sample of `x` in index order (lazy when `x` is). The search evaluator and
    the API's re-estimation of the written model both draw it here, so that a written model
    carries the statistics its mask was scored with."""
    idx = np.random.default_rng(seed).choice(len(x), size=min(len(x), count), replace=False)
    return take(x, np.sort(idx))
