"""The checkpoint file format of every search method: data only, it cannot run code.

A checkpoint is an ``.npz`` archive (numpy's zip of ``.npy`` arrays, read with
``allow_pickle=False``) holding one JSON document, ``__checkpoint__``, plus one array per
numpy array or torch tensor of the state. The JSON document is::

    {"format": "onnxprune-checkpoint", "version": 1, "fingerprint": "...", "state": TREE}

where TREE is plain JSON for None, booleans, numbers (NaN and infinities included), strings and
lists, and a tagged object for everything else: ``{"__t": "map", "v": {...}}`` (a dict with
string keys), ``{"__t": "dict", "items": [[k, v], ...]}`` (other keys, e.g. an optimizer's
integer parameter ids), ``{"__t": "tuple", "v": [...]}``, ``{"__t": "ndarray", "key": "a3"}``,
``{"__t": "tensor", "key": "a4", "dtype": "float32"}``, ``{"__t": "scalar", "dtype": "<f8", "v": 0.5}``
(a numpy scalar). Any other type is refused when saving.

Loading checks the format name and version; a corrupt or foreign file raises `InputError`
(exit 2): a file from someone else is data, never code.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from onnxprune.errors import InputError

FORMAT = "onnxprune-checkpoint"
VERSION = 1
_META = "__checkpoint__"


def encode(fingerprint: str, state: Any) -> bytes:
    """The bytes of a checkpoint of `state` (see the module docstring for what it may hold)."""
    arrays: dict[str, np.ndarray] = {}
    tree = _encode(state, arrays)
    doc = {"format": FORMAT, "version": VERSION, "fingerprint": fingerprint, "state": tree}
    meta = np.frombuffer(json.dumps(doc).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **{_META: meta}, **arrays)
    return buf.getvalue()


def decode(data: bytes, where: str) -> tuple[str, Any]:
    """(fingerprint, state) of a checkpoint's bytes; `InputError` naming `where` if it is not one."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            if _META not in npz.files:
                raise ValueError("no checkpoint header")
            doc = json.loads(npz[_META].tobytes().decode())
            if not isinstance(doc, dict) or doc.get("format") != FORMAT:
                raise ValueError("not an onnxprune checkpoint")
            if doc.get("version") != VERSION:
                raise InputError(f"{where}: checkpoint format version {doc.get('version')!r}, "
                                 f"this onnxprune reads version {VERSION}")
            arrays = {k: npz[k] for k in npz.files if k != _META}
            return str(doc["fingerprint"]), _decode(doc["state"], arrays)
    except InputError:
        raise
    except (ValueError, KeyError, TypeError, OSError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise InputError(f"{where}: not an onnxprune checkpoint (or a corrupt one: {type(exc).__name__})") from None


def check_file(path: str | os.PathLike[str], where: str) -> None:
    """Refuse, before any work, a file `--resume` could not read (missing, foreign, corrupt)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{where}: checkpoint {path} does not exist")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{where}: cannot read {path} ({exc.strerror or type(exc).__name__})") from None
    decode(data, f"{where} {path}")


def _encode(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, float)) and not isinstance(obj, np.generic):
        return obj
    if isinstance(obj, np.generic):
        if obj.dtype.hasobject or obj.dtype.kind not in "biufc":
            raise TypeError(f"checkpoint: cannot save a {type(obj).__name__}")
        value = obj.item()
        if isinstance(value, complex):
            value = [value.real, value.imag]
        return {"__t": "scalar", "dtype": obj.dtype.str, "v": value}
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise TypeError("checkpoint: object arrays cannot be saved")
        key = f"a{len(arrays)}"
        arrays[key] = np.ascontiguousarray(obj)
        return {"__t": "ndarray", "key": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"__t": "map", "v": {k: _encode(v, arrays) for k, v in obj.items()}}
        return {"__t": "dict", "items": [[_encode(k, arrays), _encode(v, arrays)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__t": "tuple", "v": [_encode(v, arrays) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, arrays) for v in obj]
    tensor = _torch_tensor(obj)
    if tensor is not None:
        return _encode_tensor(tensor, arrays)
    raise TypeError(f"checkpoint: cannot save a {type(obj).__name__}")


def _torch_tensor(obj: Any) -> Any:
    import sys

    torch = sys.modules.get("torch")  # a tensor exists only if torch is loaded
    if torch is not None and isinstance(obj, torch.Tensor):
        return obj
    return None


def _encode_tensor(t: Any, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    import torch

    t = t.detach().cpu().contiguous()
    dtype = str(t.dtype).removeprefix("torch.")
    if t.dtype == torch.bfloat16:
        arr = t.view(torch.int16).numpy()
    else:
        arr = t.numpy()
    key = f"a{len(arrays)}"
    arrays[key] = arr
    return {"__t": "tensor", "key": key, "dtype": dtype}


def _decode(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    if not isinstance(obj, dict):
        return obj
    tag = obj["__t"]
    if tag == "map":
        return {str(k): _decode(v, arrays) for k, v in obj["v"].items()}
    if tag == "dict":
        return {_decode(k, arrays): _decode(v, arrays) for k, v in obj["items"]}
    if tag == "tuple":
        return tuple(_decode(v, arrays) for v in obj["v"])
    if tag == "ndarray":
        return np.array(arrays[obj["key"]])
    if tag == "scalar":
        dtype = np.dtype(obj["dtype"])
        if dtype.hasobject or dtype.kind not in "biufc":
            raise ValueError(f"scalar dtype {dtype}")
        value = obj["v"]
        return dtype.type(complex(*value) if dtype.kind == "c" else value)
    if tag == "tensor":
        import torch

        arr = np.array(arrays[obj["key"]])
        dtype = obj["dtype"]
        if dtype == "bfloat16":
            return torch.from_numpy(arr).view(torch.bfloat16)
        tensor = torch.from_numpy(arr)
        if str(tensor.dtype).removeprefix("torch.") != dtype:
            raise ValueError(f"tensor dtype {dtype} stored as {arr.dtype}")
        return tensor
    raise ValueError(f"unknown tag {tag!r}")
