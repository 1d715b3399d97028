"""Resource limits for inputs that may come from a careless or hostile user (docs/bad-inputs.md).

Every limit lives here once, as a module constant with its docstring; loaders check them
from headers and manifests *before* allocating, and refuse with one `FarcError` line that
names the value, the limit and (where raising it is legitimate) how to raise it. Stdlib only:
the runtime imports this module, and a `.farc` must run where torch and TVM are not installed.
"""

from __future__ import annotations

import os
import re
from itertools import accumulate

from farc.errors import ConfigError, FarcError

MEMORY_ENV = "FARC_MAX_MEMORY"
"""Environment variable that sets the memory budget (bytes, or with a K/M/G/T suffix, e.g.
`16G`); `farc --max-memory 16G CMD ...` sets it for one command."""

DEFAULT_MAX_MEMORY = 8 * 2**30
"""Default memory budget, 8 GiB: the largest single array, register or image batch farc
allocates for one input, and the sum of a program's arrays. A DeiT-B program at 16-bit
weights on 2-bit cells holds about 1.5 GB of codes, so real inputs stay well under it."""

MAX_STEPS_ENV = "FARC_MAX_STEPS"
"""Environment variable that raises the instruction-execution budget of one emulator run."""

DEFAULT_MAX_STEPS = 50_000_000
"""Default budget of instruction executions per emulator run (loop bodies count once per
trip). DeiT-B's FAR program at batch 1 executes about 10^6; a loop whose trip count is a
hostile 10^9 is refused before its first step instead of running for days."""

MAX_MANIFEST_BYTES = 256 * 2**20
"""Largest `manifest.json` a `.farc` may hold (256 MiB; DeiT-B's is a few MB). Not
raisable: a larger one is not a program farc wrote."""

MAX_JSON_DEPTH = 64
"""Deepest nesting of JSON objects and arrays in a manifest (farc writes at most ~12 levels:
loops in loops in blocks). Checked on the raw bytes before parsing, so a manifest nested
200 000 deep is refused instead of exhausting the parser's stack."""

MAX_CROSSBARS = 2**22
"""Most crossbars a target chip may have (4M, 260x ISAAC's 16,128): a program's crossbar ids
must be below its chip's count, and reports and occupancy maps size their tables by it.
Checked by the target loader and the program validator."""

MAX_IMAGE_PIXELS = 2**26
"""Largest image (width x height, 64 Mpixel, e.g. 8192 x 8192) a dataset folder may hold,
read from the image header before it is decoded; decoding allocates 3 bytes a pixel."""

_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str, what: str) -> int:
    """'8G', '512M', '1000000' -> bytes; ConfigError naming `what` otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", str(text), re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"{what} = {text!r} is not a size (e.g. 512M, 16G)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def max_memory() -> int:
    """The memory budget in bytes: $FARC_MAX_MEMORY, else DEFAULT_MAX_MEMORY."""
    raw = os.environ.get(MEMORY_ENV)
    return DEFAULT_MAX_MEMORY if raw is None else parse_size(raw, MEMORY_ENV)


def max_steps() -> int:
    """The emulator's instruction-execution budget: $FARC_MAX_STEPS, else the default."""
    raw = os.environ.get(MAX_STEPS_ENV)
    if raw is None:
        return DEFAULT_MAX_STEPS
    if not raw.strip().isdigit() or int(raw) < 1:
        raise ConfigError(f"{MAX_STEPS_ENV} = {raw!r} must be a positive integer")
    return int(raw)


def fmt_bytes(n: float) -> str:
    """Bytes for an error line: '256.0 GiB', '12 bytes'."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def check_memory(nbytes: float, what: str, error: type[FarcError] = ConfigError) -> None:
    """Refuse `what` when it would need more than the memory budget."""
    budget = max_memory()
    if nbytes > budget:
        raise error(f"{what} needs {fmt_bytes(nbytes)}, over the memory budget of "
                    f"{fmt_bytes(budget)} (raise it with --max-memory or {MEMORY_ENV})")


def check_steps(steps: int, what: str, error: type[FarcError] = ConfigError) -> None:
    """Refuse a run that would execute more instructions than the step budget."""
    budget = max_steps()
    if steps > budget:
        raise error(f"{what} would execute {steps:,} instructions, over the budget of "
                    f"{budget:,} (raise it with {MAX_STEPS_ENV})")


def json_depth(raw: bytes) -> int:
    """Deepest nesting of [ and { in JSON text, strings skipped; linear, no recursion."""
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKET)
    steps = (1 if b in b"[{" else -1 for b in brackets)
    return max(accumulate(steps, initial=0))


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
