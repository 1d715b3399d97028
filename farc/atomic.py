"""Atomic file writes (no torch here, so light commands can use them): every output goes to
a temp name beside its target and is renamed into place only once it is complete.

The output rules every command follows (docs/bad-inputs.md):
- `check_outputs` before any work: no output is one of the command's inputs or another of its
  outputs (compared as resolved paths and as files), and each can be written (a missing
  folder is created, as `atomic_write` will; a read-only one fails now, naming the path);
- temp files are named `.NAME.PID.XXXXXXXX.tmp`; `install_signal_cleanup` (the CLI calls it)
  removes them on SIGTERM/SIGHUP, and a temp left by a dead process (SIGKILL, power loss) is
  removed by the next write of the same output;
- every output gets the mode open() would give it (0666 less the umask), whatever its writer
  does to the temp file;
- a write that fails names the user's path, never the temp file."""

from __future__ import annotations

import os
import re
import signal
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from farc.errors import ConfigError, OutputError

Writer = Callable[[Path], object]
PathLike = str | os.PathLike

_LIVE_TEMPS: set[Path] = set()
"""Temp files of writes in progress in this process (removed by the signal handler)."""


def atomic_write(path: Path, write: Writer) -> None:
    """Call write(tmp) on a temp file beside `path`, then rename it over `path`.

    A crash or an error mid-write never leaves a half-written file under the final name."""
    atomic_write_all([(Path(path), write)])


def atomic_write_all(items: Sequence[tuple[Path, Writer]]) -> None:
    """Write every (path, write) to its temp file first, then rename them all: an error in
    any writer leaves none of the outputs (and no temp file) behind."""
    temps: list[tuple[Path, Path]] = []
    try:
        for target, write in items:
            path = Path(target)
            tmp = _new_temp(path)
            temps.append((tmp, path))
            try:
                write(tmp)
                os.chmod(tmp, file_mode())  # after writing: some writers recreate the file
            except OutputError:
                raise
            except OSError as exc:
                raise OutputError(f"{path}: cannot write it ({exc.strerror or exc})") from None
        for tmp, path in temps:
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise OutputError(f"{path}: cannot write it ({exc.strerror or exc})") from None
    finally:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
            _LIVE_TEMPS.discard(tmp)


def _new_temp(path: Path) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write it ({exc.strerror or exc})") from None
    os.close(fd)
    _LIVE_TEMPS.add(Path(tmp))
    return Path(tmp)


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _stale_pattern(path: Path) -> re.Pattern[str]:
    """Temp names of `path`: ours (.NAME.PID.XXXXXXXX.tmp) and older farcs' (.NAME.XXXXXXXX.tmp,
    no pid: always stale once a new write starts)."""
    return re.compile(rf"\.{re.escape(path.name)}\.(?:(\d+)\.)?[A-Za-z0-9_]{{8}}\.tmp")


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove temp files of `path` left by processes that no longer run; returns them."""
    pattern, removed = _stale_pattern(path), []
    try:
        entries = list(path.parent.iterdir()) if path.parent.is_dir() else []
    except OSError:
        return removed
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m and not (m.group(1) and _alive(int(m.group(1)))):
            try:
                entry.unlink()
                removed.append(entry)
            except OSError:
                pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def install_signal_cleanup() -> None:
    """On SIGTERM or SIGHUP, remove this process's temp files, then die of the signal as
    before (exit status unchanged). Only from the main thread, and only where no other
    handler is installed."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) == signal.SIG_DFL:
            signal.signal(sig, _cleanup_and_die)


def _cleanup_and_die(signum: int, frame: object) -> None:
    for tmp in list(_LIVE_TEMPS):
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def file_mode() -> int:
    """The mode open() would give a new file: 0666 less the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def check_writable(path: PathLike) -> None:
    """Fail now, with one line, when `atomic_write` could not write `path` later (a command
    that trains or compiles for minutes checks its output first). Probes with a real temp
    file: only that shows a read-only mount or a folder root may not write."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a file name")
    folder = next(p for p in (path.parent.absolute(), *path.parent.absolute().parents)
                  if p.exists())
    if not folder.is_dir():
        raise ConfigError(f"{path}: cannot create it, {folder} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=folder)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write in {folder} ({exc.strerror})") from None
    os.close(fd)
    os.unlink(probe)


def same_file(a: PathLike, b: PathLike) -> bool:
    """True when two paths name one file: equal once resolved (symlinks, '..'), or the same
    inode (hard links, bind mounts)."""
    pa, pb = Path(a), Path(b)
    if pa.resolve() == pb.resolve():
        return True
    try:
        return pa.exists() and pb.exists() and os.path.samefile(pa, pb)
    except OSError:
        return False


def check_outputs(outputs: Mapping[str, PathLike | None],
                  inputs: Mapping[str, PathLike | None] | None = None) -> None:
    """Before any work: refuse an output that is one of the inputs or another output, then
    check that each output can be written. Keys are the option names the user typed
    ('-o', '--html', 'MODEL.farc'); None values (options not given) are skipped."""
    given_in = [(k, v) for k, v in (inputs or {}).items() if v is not None]
    given_out = [(k, v) for k, v in outputs.items() if v is not None]
    for i, (label, path) in enumerate(given_out):
        for in_label, in_path in given_in:
            if same_file(path, in_path):
                raise ConfigError(f"{label} {path} is the input {in_label} {in_path}: writing "
                                  "it would destroy the input; choose another output path")
        for other_label, other in given_out[:i]:
            if same_file(path, other):
                raise ConfigError(f"{label} {path} and {other_label} {other} are the same "
                                  "file; give each output its own path")
    for _, path in given_out:
        check_writable(path)
