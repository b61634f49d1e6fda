"""Preprocessing of raw (N, C, H, W) images into what a model's input expects.

Order: pixels to [0, 1] -> resize (bilinear) to the model's H, W -> 1 <-> 3 channel conversion
(repeat / average) -> optional per-channel (x - mean) / std -> NCHW or NHWC, float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from onnxprune.errors import DataError

LAYOUTS = ("auto", "nchw", "nhwc")
_CHUNK = 2048  # images preprocessed at a time, to bound peak memory


@dataclass(frozen=True)
class ImageGeometry:
    """What a model's image input looks like; unknown (dynamic) sizes are None."""

    layout: str  # "nchw" | "nhwc"
    channels: int | None
    height: int | None
    width: int | None

    @property
    def size(self) -> tuple[int, int] | None:
        """(H, W) when both are known."""
        if self.height is None or self.width is None:
            return None
        return (self.height, self.width)


def _known(dim: object) -> int | None:
    """A static dimension as an int, or None for dynamic ones (None, 'N', 0, -1)."""
    if isinstance(dim, (int, np.integer)) and not isinstance(dim, bool) and int(dim) > 0:
        return int(dim)
    return None


def image_geometry(input_shape: Sequence[object], layout: str = "auto") -> ImageGeometry:
    """Read the layout, channels and size of a model input shape such as (1, 1, 28, 28).

    With layout="auto", a channel dimension of 1 or 3 in position 1 means NCHW, in the last
    position NHWC; when both are dynamic, NCHW (the ONNX convention) is assumed.

    Raises:
        DataError: the shape is not 4-D, or its layout cannot be told apart.
    """
    layout = layout.lower()
    if layout not in LAYOUTS:
        raise DataError(f"unknown layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    shape = tuple(input_shape)
    if len(shape) != 4:
        raise DataError(f"model input shape {shape} is not an image batch (N, C, H, W) or (N, H, W, C)")
    dims = [_known(d) for d in shape]
    if layout == "auto":
        if dims[1] in (1, 3):
            layout = "nchw"
        elif dims[3] in (1, 3):
            layout = "nhwc"
        elif dims[1] is None and dims[3] is None:
            layout = "nchw"
        else:
            raise DataError(f"cannot tell whether model input shape {shape} is NCHW or NHWC "
                            "(no channel dimension of 1 or 3): pass layout 'nchw' or 'nhwc' (--layout)")
    if layout == "nchw":
        return ImageGeometry("nchw", dims[1], dims[2], dims[3])
    return ImageGeometry("nhwc", dims[3], dims[1], dims[2])


def _check_stats(name: str, values: Sequence[float] | None, channels: int) -> np.ndarray | None:
    if values is None:
        return None
    arr = np.asarray(values, dtype=np.float32).reshape(-1)
    if arr.size not in (1, channels):
        raise DataError(f"{name} has {arr.size} values but the images have {channels} channels")
    return arr.reshape(1, -1, 1, 1) if arr.size == channels else arr.reshape(1, 1, 1, 1)


def check_stats(values: Sequence[float] | None, channels: int | None, nonzero: bool = False) -> None:
    """Raise `DataError` when per-channel `values` (mean or std) do not fit `channels`."""
    if values is None:
        return
    arr = _check_stats("std" if nonzero else "mean", values, channels or np.asarray(values).size)
    if nonzero and arr is not None and np.any(arr == 0):
        raise DataError("std must not contain zeros")


def _resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (n, C, H, W) float32 to (n, C, *size), antialiased when shrinking."""
    import torch
    import torch.nn.functional as F

    shrink = size[0] < x.shape[2] or size[1] < x.shape[3]
    with torch.no_grad():
        out = F.interpolate(torch.from_numpy(np.ascontiguousarray(x)), size=size, mode="bilinear",
                            align_corners=False, antialias=shrink)
    return out.numpy()


def convert_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """(n, C, H, W) -> (n, channels, H, W): 1 -> 3 repeats, 3 -> 1 averages.

    Raises:
        DataError: any other conversion.
    """
    have = x.shape[1]
    if have == channels:
        return x
    if have == 1 and channels == 3:
        return np.repeat(x, 3, axis=1)
    if have == 3 and channels == 1:
        return x.mean(axis=1, keepdims=True, dtype=np.float32)
    raise DataError(f"the images have {have} channel(s) but the model takes {channels}: "
                    "only 1 <-> 3 conversions are supported")


def preprocess(
    x: np.ndarray,
    *,
    scale: float,
    geometry: ImageGeometry,
    size: tuple[int, int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> np.ndarray:
    """Turn raw (N, C, H, W) images into float32 model input.

    Args:
        x: raw images, (N, C, H, W), any dtype; `x / scale` lies in [0, 1].
        scale: stored value of full intensity (255 for 8-bit images).
        geometry: the model's input (layout, channels, size); unknown parts keep the data's own.
        size: (H, W) to resize to, overriding the model's.
        mean, std: per-channel (or single) statistics applied after scaling to [0, 1].

    Returns:
        float32 array (N, C', H', W') for NCHW models or (N, H', W', C') for NHWC models.
    """
    target = size if size is not None else geometry.size
    if target is not None:
        target = (int(target[0]), int(target[1]))
        if min(target) <= 0:
            raise DataError(f"resize to {target}: sizes must be positive")
    channels = geometry.channels or x.shape[1]
    mean_arr = _check_stats("mean", mean, channels)
    std_arr = _check_stats("std", std, channels)
    if std_arr is not None and np.any(std_arr == 0):
        raise DataError("std must not contain zeros")

    out_h, out_w = target if target is not None else (x.shape[2], x.shape[3])
    n = len(x)
    if geometry.layout == "nchw":
        out = np.empty((n, channels, out_h, out_w), dtype=np.float32)
    else:
        out = np.empty((n, out_h, out_w, channels), dtype=np.float32)
    inv_scale = np.float32(1.0 / scale)
    for start in range(0, n, _CHUNK):
        chunk = x[start:start + _CHUNK].astype(np.float32) * inv_scale  # (n, C, H, W) in [0, 1]
        if (chunk.shape[2], chunk.shape[3]) != (out_h, out_w):
            chunk = _resize(chunk, (out_h, out_w))
        chunk = convert_channels(chunk, channels)
        if mean_arr is not None:
            chunk = chunk - mean_arr
        if std_arr is not None:
            chunk = chunk / std_arr
        if geometry.layout == "nhwc":
            chunk = chunk.transpose(0, 2, 3, 1)  # (n, H, W, C)
        out[start:start + len(chunk)] = chunk
    return out
