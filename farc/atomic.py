"""Atomic file writes (no torch here, so light commands can use them): every output goes to
a temp name beside its target and is renamed into place only once it is complete."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from farc.errors import ConfigError

Writer = Callable[[Path], object]


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
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            os.chmod(tmp, file_mode())  # mkstemp makes 0600; outputs get the usual umask mode
            temps.append((Path(tmp), path))
            write(Path(tmp))
        for tmp, path in temps:
            os.replace(tmp, path)
    finally:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)


def file_mode() -> int:
    """The mode open() would give a new file: 0666 less the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def check_writable(path: str | os.PathLike) -> None:
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
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write in {folder} ({exc.strerror})") from None
    os.close(fd)
    os.unlink(probe)
