"""`pip install` from a wheel into a fresh virtual environment that reuses the dependencies
already installed (offline: `--no-index`, so pip must accept the versions it finds, which checks
that pyproject.toml's ranges admit the CI-tested versions), then what a new user runs first:
`onnxprune --help`, `python -m onnxprune --help` and the README's Python example."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def readme_python_example() -> str:
    """The README's Python example: the ```python block under the "Python API" heading."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)
    assert len(section) == 2, "README.md has no '## Python API' section"
    match = re.search(r"```python\n(.*?)```", section[1], re.S)
    assert match, "no ```python block in the README's Python API section"
    return match.group(1)


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with onnxprune installed from a freshly built wheel; returns its bin folder."""
    work = tmp_path_factory.mktemp("wheel")
    dist = work / "dist"
    # Build from a copy of the sources so that no build/ or egg-info lands in the checkout.
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(dist), str(ROOT)], cwd=work, timeout=600)
    wheels = list(dist.glob("onnxprune-*.whl"))
    assert len(wheels) == 1, wheels
    env_dir = work / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    bindir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / "python"
    # Reuse the dependencies of the running environment (no downloads): a .pth file puts its
    # site-packages after the venv's own.
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=work).stdout.strip())
    (site / "_reuse_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # The venv's own (older) setuptools would shadow the one torch requires.
    for own in site.glob("setuptools*"):
        shutil.rmtree(own) if own.is_dir() else own.unlink()
    # Offline and with no extra wheel folders: pip must find every dependency installed.
    env = {**_clean_env(), "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": ""}
    _run([str(python), "-m", "pip", "install", "--no-index", "-q", str(wheels[0])], cwd=work, env=env, timeout=600)
    return bindir


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def test_wheel_installs_and_runs(installed: Path, tmp_path: Path) -> None:
    env = _clean_env()
    # onnxprune comes from the wheel, not from the checkout
    where = _run([str(installed / "python"), "-c", "import onnxprune; print(onnxprune.__file__)"], cwd=tmp_path, env=env)
    assert str(installed.parent) in where.stdout and str(ROOT) not in where.stdout
    out = _run([str(installed / "onnxprune"), "--help"], cwd=tmp_path, env=env).stdout
    assert "prune" in out and "analyze" in out and "bench" in out
    out = _run([str(installed / "python"), "-m", "onnxprune", "--help"], cwd=tmp_path, env=env).stdout
    assert "prune" in out
    # the shipped files and the typing marker are in the wheel
    files = _run([str(installed / "python"), "-c",
                  "import onnxprune, pathlib; p = pathlib.Path(onnxprune.__file__).parent; "
                  "print((p / 'py.typed').exists(), onnxprune.demo_model().exists())"], cwd=tmp_path, env=env)
    assert files.stdout.split() == ["True", "True"]
    # the library does not install a generic `models` package
    proc = subprocess.run([str(installed / "python"), "-c", "import importlib.util as u; print(u.find_spec('models'))"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "None", proc.stdout


def test_readme_python_example_runs(installed: Path, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(readme_python_example())
    proc = _run([str(installed / "python"), str(script)], cwd=tmp_path, env=_clean_env(), timeout=300)
    assert "MACs" in proc.stdout, proc.stdout
    assert (tmp_path / "pruned.onnx").exists()
