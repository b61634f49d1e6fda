"""Output files: checked before any work, written atomically, never over an input.

- `check_outputs` refuses, before anything runs, an output that is an input (same file, through
  links too), a directory, a duplicate of another output, or that lies in a missing or
  unwritable folder.
- `atomic_write` writes a temporary file in the target's folder (mode: the replaced file's, else
  0666 minus the umask), fsyncs it, renames it over the target and fsyncs the folder: readers see
  the old file or the whole new one.
- Inside `transaction()`, writes are held in memory and committed together when the block ends
  without error: a run with several outputs writes all of them or none. `stage=False` writes at
  once (checkpoints, which must survive an interrupted run).
- `install_signal_handlers()` turns SIGTERM and SIGHUP into `Interrupted` (like SIGINT's
  KeyboardInterrupt); temporary files are removed whatever ends the process, except SIGKILL,
  after which the next write to the same path removes the dead process's leftovers.
- The path ``-`` means standard output.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import signal
import stat
import sys
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from onnxprune.errors import InputError, Interrupted, OutputError

STDOUT = "-"

_live_temps: set[Path] = set()  # temporary files that exist right now (removed on any exit)
_staged: list[list[tuple[Path | str, bytes]]] = []  # open transactions, innermost last


# --------------------------------------------------------------------------------------------
# checks before any work


def _same_file(a: Path, b: Path) -> bool:
    """True when `a` and `b` name one file (hard or symbolic links included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist: equal only if they resolve to one path
        try:
            return a.resolve() == b.resolve()
        except (OSError, RuntimeError):
            return False


def model_files(path: str | os.PathLike[str]) -> list[Path]:
    """An ONNX file and the external-data files it refers to (the files `load_model` reads)."""
    path = Path(path)
    files = [path]
    if not path.is_file():
        return files
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # unreadable: the loader reports it, nothing more to protect here
        return files
    seen: set[str] = set()
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        for t in graph.initializer:
            for entry in t.external_data:
                if entry.key == "location" and entry.value not in seen:
                    seen.add(entry.value)
                    files.append(path.parent / entry.value)
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)
    return files


def check_outputs(outputs: Mapping[str, str | os.PathLike[str] | None],
                  inputs: Iterable[str | os.PathLike[str] | None]) -> None:
    """Refuse unusable outputs before any work (`InputError`, exit 2, naming the flag and path).

    `outputs` maps a flag (``-o``, ``--report``...) to its path (None: not asked for;
    ``-`` standard output). `inputs` are the files the run reads; use `model_files` for models.
    """
    ins = [Path(p) for p in inputs if p is not None and str(p) != STDOUT]
    seen: dict[Path, str] = {}
    for flag, raw in outputs.items():
        if raw is None or str(raw) == STDOUT:
            continue
        path = Path(raw)
        where = f"{flag} {path}"
        for src in ins:
            if _same_file(path, src):
                raise InputError(f"{where}: refusing to overwrite an input ({src})")
        for other, other_flag in seen.items():
            if _same_file(path, other):
                raise InputError(f"{where}: the same file as {other_flag}")
        seen[path] = flag
        if path.is_dir():
            raise InputError(f"{where}: is a directory, expected a file name")
        if path.exists() and not stat.S_ISREG(path.stat().st_mode):
            raise InputError(f"{where}: exists and is not a regular file")
        folder = path.parent
        if not folder.exists():
            raise InputError(f"{where}: folder {folder} does not exist")
        if not folder.is_dir():
            raise InputError(f"{where}: {folder} is not a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise InputError(f"{where}: cannot write in folder {folder} (permission denied or read-only)")


# --------------------------------------------------------------------------------------------
# writing


@contextlib.contextmanager
def transaction() -> Iterator[None]:
    """Hold every `atomic_write` inside the block and commit them together at its end.

    On an exception (or a signal) nothing is written. Nested blocks commit with the outermost.
    """
    _staged.append([])
    try:
        yield
    except BaseException:
        _staged.pop()
        raise
    writes = _staged.pop()
    if _staged:  # nested: the outer block commits
        _staged[-1].extend(writes)
        return
    _commit(writes)


def atomic_write(path: str | os.PathLike[str], payload: bytes, *, stage: bool = True) -> None:
    """Write `payload` to `path` so that readers see the old file or the whole new one.

    Inside `transaction()` the write waits for the block's end unless `stage` is False.
    Raises `OutputError` (exit 2, with the path and the reason) on any file-system error.
    """
    target: Path | str = STDOUT if str(path) == STDOUT else Path(path)
    if stage and _staged:
        _staged[-1].append((target, payload))
        return
    _commit([(target, payload)])


def _commit(writes: list[tuple[Path | str, bytes]]) -> None:
    """All temporary files first, then the renames: an error before the renames writes nothing."""
    temps: list[tuple[Path, Path]] = []
    try:
        for target, payload in writes:
            if isinstance(target, Path):
                temps.append((_write_temp(target, payload), target))
        for tmp, target in temps:
            try:
                os.replace(tmp, target)
            except OSError as exc:
                raise OutputError(f"{target}: cannot write ({_reason(exc)})") from None
            _live_temps.discard(tmp)
        for folder in {t.parent for _, t in temps}:
            _fsync_folder(folder)
    finally:
        for tmp, _ in temps:
            _remove(tmp)
    for target, payload in writes:
        if target == STDOUT:
            sys.stdout.flush()
            sys.stdout.buffer.write(payload)
            sys.stdout.buffer.flush()


def _write_temp(path: Path, payload: bytes) -> Path:
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OutputError(f"{path}: is a directory, expected a file name")
    if not folder.is_dir():
        raise OutputError(f"{path}: folder {folder} does not exist")
    _remove_stale_temps(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mode = None  # a new file: 0666 minus the umask, as any program would create it
    tmp = folder / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    _live_temps.add(tmp)  # before it exists: a signal in between removes nothing harmful
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            if mode is not None:
                os.fchmod(fd, mode)
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        _remove(tmp)
        raise OutputError(f"{path}: cannot write ({_reason(exc)})") from None
    return tmp


def _reason(exc: OSError) -> str:
    return exc.strerror or errno.errorcode.get(exc.errno or 0, type(exc).__name__)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # not every platform opens folders; the rename itself is done
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(tmp: Path) -> None:
    with contextlib.suppress(OSError):
        tmp.unlink()
    _live_temps.discard(tmp)


_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


def _remove_stale_temps(path: Path) -> None:
    """Remove temporary files of `path` left by processes that no longer exist (SIGKILL)."""
    try:
        entries = list(path.parent.iterdir()) if str(path.parent) else list(Path(".").iterdir())
    except OSError:
        return
    for entry in entries:
        m = _TEMP_RE.match(entry.name)
        if m is None or m["name"] != path.name:
            continue
        pid = int(m["pid"])
        if pid == os.getpid() or _alive(pid):
            continue
        with contextlib.suppress(OSError):
            entry.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_temps() -> None:
    """Remove every temporary file this process is writing (called on interruption)."""
    for tmp in list(_live_temps):
        _remove(tmp)


# --------------------------------------------------------------------------------------------
# signals


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP raise `Interrupted` (as SIGINT raises KeyboardInterrupt), so that
    `finally` blocks run and temporary files are removed; the CLI exits 128 + the signal number."""
    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None:
            with contextlib.suppress(ValueError, OSError):  # not the main thread
                signal.signal(sig, _raise_interrupted)
