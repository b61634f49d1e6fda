"""Parsing of `--data SPEC` strings into a `DataSpec`.

Grammar (DESIGN.md):

    digits                  scikit-learn's 8x8 digits (1,797 images, 10 classes)
    fashion-mnist[:DIR]     Fashion-MNIST IDX files, default /usr/share/datasets/fashion-mnist
    idx:DIR                 any dataset stored as IDX files (train-images-idx3-ubyte[.gz], ...)
    folder:DIR              one sub-folder per class of images (optionally DIR/train, DIR/test)
    npz:FILE                arrays `x`, `y` (optionally `x_test`, `y_test`)
    random[:N]              N seeded gaussian images with random labels (smoke tests)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from onnxprune.errors import DataError

DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_RANDOM_COUNT = 640

SPEC_GRAMMAR = "digits, fashion-mnist[:DIR], idx:DIR, folder:DIR, npz:FILE, random[:N]"

# Accepted spellings of each kind; the first is the canonical one.
_KIND_ALIASES: dict[str, str] = {
    "digits": "digits",
    "fashion-mnist": "fashion-mnist",
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "idx": "idx",
    "folder": "folder",
    "npz": "npz",
    "random": "random",
}
_NEEDS_PATH = {"idx", "folder", "npz"}
_NO_ARGUMENT = {"digits"}


@dataclass(frozen=True)
class DataSpec:
    """A parsed data specification.

    Attributes:
        kind: one of "digits", "fashion-mnist", "idx", "folder", "npz", "random".
        path: the directory or file the data lives in (None for digits and random).
        count: number of images for "random" (None otherwise).
    """

    kind: str
    path: Path | None = None
    count: int | None = None

    def __str__(self) -> str:
        if self.kind == "random":
            return "random" if self.count in (None, DEFAULT_RANDOM_COUNT) else f"random:{self.count}"
        if self.kind == "fashion-mnist" and self.path == DEFAULT_FASHION_MNIST_DIR:
            return "fashion-mnist"
        if self.path is not None:
            return f"{self.kind}:{self.path}"
        return self.kind


def parse_data_spec(spec: str | DataSpec) -> DataSpec:
    """Parse a `--data` string such as ``fashion-mnist:/data/fm`` into a `DataSpec`.

    Raises:
        DataError: the string is empty, names an unknown kind, or lacks / has a bad argument.
    """
    if isinstance(spec, DataSpec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"empty data spec: expected one of {SPEC_GRAMMAR}")
    text = spec.strip()
    head, sep, arg = text.partition(":")
    kind = _KIND_ALIASES.get(head.strip().lower())
    if kind is None:
        raise DataError(f"unknown data spec {text!r}: expected one of {SPEC_GRAMMAR}")
    arg = arg.strip()
    if sep and not arg:
        raise DataError(f"data spec {text!r} has an empty argument after ':'")

    if kind in _NO_ARGUMENT:
        if sep:
            raise DataError(f"data spec {text!r}: {kind!r} takes no argument (use plain {kind!r})")
        return DataSpec(kind)
    if kind == "random":
        if not sep:
            return DataSpec("random", count=DEFAULT_RANDOM_COUNT)
        try:
            count = int(arg)
        except ValueError:
            raise DataError(f"data spec {text!r}: random:N needs an integer N, got {arg!r}") from None
        if count < 3:
            raise DataError(f"data spec {text!r}: random:N needs N >= 3 (train, val and test)")
        return DataSpec("random", count=count)
    if kind == "fashion-mnist":
        path = Path(arg).expanduser() if sep else DEFAULT_FASHION_MNIST_DIR
        return DataSpec("fashion-mnist", path=path)
    if kind in _NEEDS_PATH and not sep:
        what = "FILE" if kind == "npz" else "DIR"
        raise DataError(f"data spec {text!r} needs a path: write {kind}:{what}")
    return DataSpec(kind, path=Path(arg).expanduser())
