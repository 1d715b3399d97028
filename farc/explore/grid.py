"""The grid of `farc sweep`: `--grid section.key=v1,v2,...` (integer ranges `a..b` allowed
among the values), expanded into the cartesian product of target overrides. Keys joined by
`+` move together (one axis, values joined by `:`), e.g. a cell's bits with the weight bits:
`--grid crossbar.cell_bits+quant.weight_bits=1:8,2:16`. (The cost model scales an ADC's
energy and area with adc.bits itself, targets/derived.py: `adc.bits=4..8` is enough.)

Which keys exist and which values they accept is decided by `Target.with_overrides`, never
by a list kept here: a value is typed like the key's value in the base target (int, float,
bool or str), and every point's target is built and validated before any work, so a typo
or an out-of-range value fails at once with one line naming the --grid item."""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections.abc import Sequence
from typing import Any

from farc.errors import ConfigError
from farc.targets import Target
from farc.targets.target import lossy_adc_default

MAX_POINTS = 4096
"""A grid larger than this is refused (a typo such as 4..900 would run for days)."""
MAX_SLUG = 160
"""Longest point file name stem (file systems allow 255 bytes)."""
_RANGE = re.compile(r"^\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*$")
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")

Point = dict[str, Any]
"""One point of the grid: 'section.key' -> value, in the order the --grid options came."""


Axis = tuple[str, ...]
"""One --grid option's keys: one key, or several joined by '+' that move together."""


def parse_grid(items: Sequence[str], base: Target) -> dict[Axis, list[tuple[Any, ...]]]:
    """'adc.bits=4..6' -> {('adc.bits',): [(4,), (5,), (6,)]}, values typed like `base`'s.

    Raises ConfigError (one line, naming the item) on a malformed item, an empty or
    repeated value, a backwards range, a key given twice, or a value of the wrong type."""
    if not items:
        raise ConfigError("give at least one --grid SECTION.KEY=V1,V2,... (or A..B)")
    grid: dict[Axis, list[tuple[Any, ...]]] = {}
    seen: set[str] = set()
    for item in items:
        keys, values = _parse_item(item, base)
        for key in keys:
            if key in seen:
                raise ConfigError(f"--grid {item!r}: {key} is swept twice")
            seen.add(key)
        grid[keys] = values
    return grid


def grid_keys(grid: dict[Axis, list[tuple[Any, ...]]]) -> list[str]:
    """Every swept key, in --grid order (the table's first columns)."""
    return [k for axis in grid for k in axis]


def _parse_item(item: str, base: Target) -> tuple[Axis, list[tuple[Any, ...]]]:
    head, sep, raw = item.partition("=")
    keys = tuple(k.strip() for k in head.split("+"))
    if not sep or not all(re.fullmatch(r"[A-Za-z_]\w*\.[A-Za-z_]\w*", k) for k in keys):
        raise ConfigError(f"--grid {item!r}: expected SECTION.KEY=V1,V2,... or "
                          "SECTION.KEY=A..B, e.g. adc.bits=4..9")
    current = [_current(base, k) for k in keys]
    values: list[tuple[Any, ...]] = []
    for part in raw.split(","):
        for combo in _expand_combo(part, len(keys), item):
            v = tuple(_typed(t, c, item) for t, c in zip(combo, current))
            if v in values:
                raise ConfigError(f"--grid {item!r}: value {':'.join(combo)} appears twice")
            values.append(v)
    return keys, values


def _expand_combo(part: str, n: int, item: str) -> list[tuple[str, ...]]:
    """One comma-separated part: a value (a..b ranges expand) or, for n linked keys, n
    values joined by ':' (no ranges)."""
    if n == 1:
        return [(t,) for t in _expand_part(part, item)]
    fields = part.split(":")
    if len(fields) != n or not all(f.strip() for f in fields):
        raise ConfigError(f"--grid {item!r}: {part.strip()!r} must give {n} values joined by "
                          "':', one per key")
    return [tuple(f.strip() for f in fields)]


def _expand_part(part: str, item: str) -> list[str]:
    """'4..6' -> ['4', '5', '6'] (inclusive); anything else -> [part]."""
    if not part.strip():
        raise ConfigError(f"--grid {item!r}: empty value (values are separated by commas)")
    m = _RANGE.match(part)
    if m is None:
        if ".." in part:
            raise ConfigError(f"--grid {item!r}: range {part.strip()!r} must be two integers "
                              "a..b")
        return [part.strip()]
    lo, hi = int(m.group(1)), int(m.group(2))
    if lo > hi:
        raise ConfigError(f"--grid {item!r}: range {lo}..{hi} is empty (write {hi}..{lo})")
    if hi - lo >= MAX_POINTS:
        raise ConfigError(f"--grid {item!r}: range {lo}..{hi} has {hi - lo + 1} values, more "
                          f"than the {MAX_POINTS} points a sweep may have")
    return [str(v) for v in range(lo, hi + 1)]


def _current(base: Target, key: str) -> Any:
    """The base target's value of `key`; an unknown key fails here with with_overrides'
    own message (which suggests the nearest section or key)."""
    section, _, name = key.partition(".")
    data = base.to_dict()
    if section in data and name in data[section]:
        return data[section][name]
    try:
        base.with_overrides(**{key: ""})
    except ConfigError as exc:
        raise ConfigError(f"--grid {key}: {_strip_source(exc)}") from None
    raise ConfigError(f"--grid {key}: not a key of target {base.name}")


def _typed(text: str, current: Any, item: str) -> Any:
    """`text` as a value of the same type as `current` (the base target's value)."""
    kind = type(current)
    try:
        if kind is bool:
            low = text.lower()
            if low not in _TRUE + _FALSE:
                raise ValueError
            return low in _TRUE
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
    except ValueError:
        what = "true or false" if kind is bool else f"an {kind.__name__}" if kind is int \
            else f"a {kind.__name__}"
        raise ConfigError(f"--grid {item!r}: {text!r} is not {what}") from None
    return text


def expand(grid: dict[Axis, list[tuple[Any, ...]]]) -> list[Point]:
    """The cartesian product over the axes, the first --grid varying slowest."""
    total = math.prod(len(v) for v in grid.values())
    if total > MAX_POINTS:
        raise ConfigError(f"--grid: {total:,} points, more than the {MAX_POINTS} a sweep may "
                          "have")
    return [{k: v for axis, vals in zip(grid, combo) for k, v in zip(axis, vals)}
            for combo in itertools.product(*grid.values())]


def fixed_base(items: Sequence[str], base: Target,
               notes: list[str] | None = None) -> tuple[Target, Point]:
    """`--set SECTION.KEY=VALUE` (same syntax, one value): overrides every point shares,
    applied to the base before the grid. Returns the new base and the fixed values; the
    line saying the ADC policy below lossless was chosen goes to `notes`."""
    if not items:
        return base, {}
    try:
        grid = parse_grid(items, base)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("--grid", "--set", 1)) from None
    for axis, values in grid.items():
        if len(values) > 1:
            raise ConfigError(f"--set {'+'.join(axis)}: takes one value, got {len(values)} "
                              "(sweep several with --grid)")
    point = expand(grid)[0]
    try:
        fixed, note = lossy_adc_default(base, base.with_overrides(**point), point)
    except ConfigError as exc:
        raise ConfigError(f"--set {point_label(point)}: {_strip_source(exc)}") from None
    if note and notes is not None:
        notes.append(f"--set {point_label(point)}: {note}")
    return fixed, point


def check_disjoint(fixed: Point, grid: dict[Axis, list[tuple[Any, ...]]]) -> None:
    """A key is either fixed (--set) or swept (--grid), not both."""
    both = [k for k in grid_keys(grid) if k in fixed]
    if both:
        raise ConfigError(f"--set {both[0]}: also swept by --grid; give it in one place")


def point_targets(base: Target, points: Sequence[Point],
                  notes: list[str] | None = None) -> list[Target]:
    """Every point's validated target, built before any work; the first bad one fails with
    with_overrides' message and the point. Points below a lossless ADC width take the
    calibrated per-slice policy (targets.target.lossy_adc_default), said in one line added
    to `notes`."""
    out, below = [], []
    for p in points:
        try:
            target, note = lossy_adc_default(base, base.with_overrides(**p), p)
        except ConfigError as exc:
            raise ConfigError(f"--grid point {point_label(p)}: {_strip_source(exc)}") from None
        out.append(target)
        below += [point_label(p)] if note else []
    if below and notes is not None:
        notes.append(f"{len(below)} point(s) below a lossless ADC width use the calibrated "
                     f"per-slice ADC policy ({', '.join(below)}); sweep adc.range to compare")
    return out


def point_label(point: Point) -> str:
    """'adc.bits=6 crossbar.cell_bits=2'."""
    return " ".join(f"{k}={_show(v)}" for k, v in point.items())


def point_slug(point: Point) -> str:
    """A file-name-safe, readable name: 'adc.bits-6_crossbar.cell_bits-2'; a long one is
    cut and ends in a digest of the whole, so it stays a valid, distinct file name."""
    text = re.sub(r"[^A-Za-z0-9._-]", "~", "_".join(f"{k}-{_show(v)}" for k, v in
                                                      point.items()))
    if len(text) <= MAX_SLUG:
        return text
    return f"{text[:MAX_SLUG - 17]}~{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _show(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def _strip_source(exc: ConfigError) -> str:
    """with_overrides' messages start with 'overrides: '; the --grid prefix replaces it."""
    return str(exc).removeprefix("overrides: ")
