"""Datasets and preprocessing for evaluation, scoring and fine-tuning. Nothing is downloaded.

    >>> from onnxprune.data import load_dataset, batches
    >>> splits = load_dataset("digits", input_shape=(1, 1, 28, 28))
    >>> x, y = splits.train            # lazy float32 (N, 1, 28, 28), int64 (N,)
    >>> xb = x[:64]                     # only these 64 images are read and preprocessed
    >>> for idx, xb, yb in loader(x, y, 64, shuffle=True, limit=512): ...
"""

from onnxprune.data.lazy import ArraySource, FolderSource, ImageSource, LazyImages, RandomSource, calibration_sample, take
from onnxprune.data.loaders import Split, Splits, batches, load_dataset
from onnxprune.data.preprocess import ImageGeometry, convert_channels, image_geometry, preprocess
from onnxprune.data.sources import FASHION_MNIST_CLASSES, RawData, read_idx_file, read_raw
from onnxprune.data.specs import DEFAULT_FASHION_MNIST_DIR, SPEC_GRAMMAR, DataSpec, parse_data_spec
from onnxprune.data.stream import DEFAULT_CALIB_IMAGES, DEFAULT_EVAL_IMAGES, ImageCaps, default_workers, loader

__all__ = [
    "DEFAULT_CALIB_IMAGES",
    "DEFAULT_EVAL_IMAGES",
    "ArraySource",
    "FolderSource",
    "ImageCaps",
    "ImageSource",
    "LazyImages",
    "RandomSource",
    "calibration_sample",
    "default_workers",
    "loader",
    "take",
    "DEFAULT_FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "SPEC_GRAMMAR",
    "DataSpec",
    "ImageGeometry",
    "RawData",
    "Split",
    "Splits",
    "batches",
    "convert_channels",
    "image_geometry",
    "load_dataset",
    "parse_data_spec",
    "preprocess",
    "read_idx_file",
    "read_raw",
]
