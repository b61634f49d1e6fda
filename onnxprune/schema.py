"""What every JSON file onnxprune writes carries: the schema version and the tool's version.

`schema_version` changes when a key is renamed or removed or its meaning changes (adding keys
does not change it), so scripts reading reports, analyses, benchmarks and trajectories can check
what they got.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from typing import Any, Mapping

SCHEMA_VERSION = 1


def stamped(data: Mapping[str, Any]) -> dict[str, Any]:
    """`data` with `schema_version` and `tool` (name, version) first."""
    from onnxprune import __version__

    out: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "tool": {"name": "onnxprune", "version": __version__}}
    out.update((k, v) for k, v in data.items() if k not in out)
    return out


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux, else `platform.processor()`)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def gpu_models() -> list[str]:
    """Names of the NVIDIA GPUs `nvidia-smi` lists (empty without one)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def machine() -> dict[str, Any]:
    """The machine a measurement ran on."""
    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "gpus": gpu_models(),
            "platform": platform.platform(), "python": platform.python_version()}
