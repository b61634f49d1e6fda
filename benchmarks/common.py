"""Shared helpers of the benchmark scripts."""

from __future__ import annotations

from pathlib import Path

from tests import zoo


def cached_export(name: str, exporter: str) -> Path:
    """The cached export if present (timing runs do not need the export check), else export."""
    path = zoo.onnx_path(name, exporter)
    return path if path.exists() else zoo.export(name, exporter)
