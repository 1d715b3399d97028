"""Shared helpers of the benchmark suite: thread pinning, the machine description, timing,
markdown tables and the `Section` every benchmark returns.

Import this module before numpy, torch or onnxruntime are loaded anywhere: BLAS libraries
read their thread count once, at load (`pin_threads`)."""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
"""Repository root (bench/ is one level below it)."""
CACHE = ROOT / "bench" / ".cache"
"""Trained digits checkpoints and compiled programs (gitignored)."""


def pin_threads(n: int) -> None:
    """Give numpy's BLAS, torch and onnxruntime the same `n` threads (call before numpy loads)."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


@dataclass
class Section:
    """One benchmark's contribution to RESULTS.md: a title, prose, tables, commands."""

    title: str
    intro: str = ""
    blocks: list[str] = field(default_factory=list)
    """Markdown blocks in order (tables, notes, command listings)."""
    raw: dict = field(default_factory=dict)
    """Machine-readable numbers (written to bench/.cache/RESULTS.json)."""
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M UTC",
                                                               time.gmtime()))

    def add(self, text: str) -> None:
        self.blocks.append(text.rstrip() + "\n")

    def table(self, header: Sequence[str], rows: Sequence[Sequence[object]],
              note: str = "") -> None:
        self.add(md_table(header, rows) + (f"\n\n{note}" if note else ""))

    def command(self, *lines: str) -> None:
        self.add("```\n" + "\n".join(lines) + "\n```")

    def load(self) -> None:
        """Note the machine load right now (other work shares these cores)."""
        self.add(f"_Load when measured: {load_text()}._")

    def markdown(self) -> str:
        head = f"## {self.title}\n\n_Measured {self.started}._\n\n" + (
            self.intro.strip() + "\n\n" if self.intro else "")
        return head + "\n".join(self.blocks)


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; floats are printed as given (format them before)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def load_text() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min) on " \
           f"{os.cpu_count()} cores"


def timeit(fn: Callable[[], object], repeat: int, warmup: bool = True) -> float:
    """Median wall seconds of `repeat` calls of `fn` (after one untimed call)."""
    if warmup:
        fn()
    times = []
    for _ in range(max(repeat, 1)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def farc_cli(args: Sequence[str], log: Path) -> None:
    """Run `farc ARGS...` (the installed CLI), appending its output to `log`; raise on error."""
    cmd = ["farc", *map(str, args)]
    with open(log, "a") as f:
        f.write(f"\n$ {shlex.join(cmd)}\n")
        f.flush()
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        f.write(f"[{time.perf_counter() - t0:.1f} s, exit {rc}]\n")
    if rc:
        raise RuntimeError(f"{shlex.join(cmd)} failed with exit code {rc}; see {log}")


def rel(p: Path) -> str:
    """`p` relative to the repository root when it lies inside it."""
    try:
        return str(Path(p).resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def machine() -> list[tuple[str, str]]:
    """What the numbers were measured on: CPU, cores, memory, software versions, date, load."""
    import numpy
    import onnxruntime
    import torch
    import tvm

    return [
        ("date (UTC)", time.strftime("%Y-%m-%d %H:%M", time.gmtime())),
        ("CPU", _cpu_model()),
        ("cores", f"{os.cpu_count()} visible to this process"),
        ("RAM", _ram()),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("python", platform.python_version()),
        ("numpy", numpy.__version__),
        ("torch", torch.__version__),
        ("apache-tvm", getattr(tvm, "__version__", "?")),
        ("onnxruntime", onnxruntime.__version__),
        ("farc commit", _git_commit()),
        ("load at start", load_text()),
    ]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=False).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "farc",
                                "passes", "targets", "runtime"], capture_output=True,
                               text=True, timeout=10, check=False).stdout.strip()
        return out + (" (with uncommitted changes in the package)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def python_cmd() -> str:
    """How this interpreter was invoked, for the 'command' lines."""
    return " ".join(["python -m bench", *(shlex.quote(a) for a in sys.argv[1:])])
