"""Fuzz the program loader and the emulator (issue 18, docs/bad-inputs.md): a valid FAR-like
program (a loop of four pruned LSTMs, slices, concats, layernorm-free gate math) has its
manifest and arrays mutated by hypothesis; `Program.load` then `Emulator.run` must either
succeed or raise a FarcError, never anything else, within a memory and a time bound.

The mutated file is written by hand (a stored zip, the arrays table recomputed or kept
stale at random), so mutations reach the validator instead of stopping at the sha256 check.
FARC_MAX_MEMORY and FARC_MAX_STEPS are lowered for the test, so the bounds the loader and
the emulator enforce are the ones measured here (tracemalloc peak, wall time)."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import sys
import time
import tracemalloc
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from farc.runtime.emulator import Emulator
from farc.runtime.program import Program
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farc.errors import FarcError

sys.path.insert(0, str(Path(__file__).parent / "targets"))
from handmade_programs import far_program

BUDGET = "16M"
"""Memory budget the loader and the emulator are given in this test."""
PEAK_LIMIT = 160 * 2**20
"""tracemalloc peak allowed for one load + run (10x the budget: numpy temporaries)."""
TIME_LIMIT_S = 10.0
"""Wall time allowed for one load + run."""


@pytest.fixture(scope="module")
def base() -> tuple[dict, dict[str, np.ndarray]]:
    from farc.targets import load_target

    prog = far_program(load_target("isaac"))
    prog.validate()
    return copy.deepcopy(prog.manifest), {k: v.copy() for k, v in prog.arrays.items()}


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def write_farc(path: Path, manifest: Any, arrays: dict[str, np.ndarray],
               refresh_table: bool) -> None:
    blobs = {k: _npy(v) for k, v in arrays.items()}
    if refresh_table and isinstance(manifest, dict):
        manifest["arrays"] = {k: {"dtype": str(v.dtype), "shape": list(v.shape),
                                  "sha256": hashlib.sha256(blobs[k]).hexdigest()}
                              for k, v in arrays.items()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("manifest.json", json.dumps(manifest))
        for k, b in blobs.items():
            zf.writestr(f"arrays/{k}.npy", b)


# ------------------------------------------------------------------ mutations
SCALARS = st.one_of(
    st.sampled_from([0, -1, 1, 2, 3, 7, 8, 255, 256, 2**31, 10**9, 10**12, 2**63, -2**63,
                     0.0, -0.5, 1e-30, 1e30, 1e308, math.nan, math.inf, -math.inf,
                     "", "x", "h0f", "xs0", "loop", "mvm", "zeros", "differential", None,
                     True, False]),
    st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(
        ["op", "in", "out", "shape", "axis", "reg", "count", "body", "name", "layer"]),
        inner, max_size=4)), max_leaves=8)


def _slots(node: Any, out: list) -> list:
    """Every (container, key) of the JSON tree, parents before children."""
    items = node.items() if isinstance(node, dict) else enumerate(node) \
        if isinstance(node, list) else ()
    for k, v in items:
        out.append((node, k))
        _slots(v, out)
    return out


@st.composite
def manifest_mutation(draw, manifest: dict) -> dict:
    m = copy.deepcopy(manifest)
    for _ in range(draw(st.integers(1, 3))):
        slots = _slots(m, [])
        parent, key = draw(st.sampled_from(slots))
        action = draw(st.sampled_from(["replace", "replace", "replace", "delete", "dup",
                                       "scale"]))
        if action == "delete":
            del parent[key]
        elif action == "dup" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(parent[key]))
        elif action == "scale" and type(parent[key]) is int:
            parent[key] = parent[key] * draw(st.sampled_from([0, -1, 2, 1000, 10**9]))
        else:
            parent[key] = draw(VALUES)
    return m


@st.composite
def int_mutation(draw, manifest: dict) -> dict:
    """Same types, other values: integers of the instructions (shapes, axes, bounds, trip
    axes, layer ids) changed, so more mutants pass validation and reach the emulator."""
    m = copy.deepcopy(manifest)
    slots = [(p, k) for p, k in _slots(m["instructions"], []) if type(p[k]) is int]
    for _ in range(draw(st.integers(1, 3))):
        parent, key = draw(st.sampled_from(slots))
        parent[key] = draw(st.one_of(st.integers(-3, 12), st.sampled_from(
            [10**6, 10**9, 10**12, 2**62])))
    return m


@st.composite
def array_mutation(draw, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = dict(arrays)
    for _ in range(draw(st.integers(1, 2))):
        name = draw(st.sampled_from(sorted(out)))
        a = out[name].copy()
        action = draw(st.sampled_from(["value", "value", "dtype", "shape", "drop", "empty"]))
        if action == "value" and a.size:
            i = draw(st.integers(0, a.size - 1))
            if a.dtype.kind == "f":
                v = draw(st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -1.0, 3e38, 1e-45]))
            else:
                v = draw(st.sampled_from([0, 1, 3, 4, 255, -1, 2**31 - 1]))
            a.reshape(-1)[i] = np.asarray(v).astype(a.dtype) if a.dtype.kind != "f" else v
            out[name] = a
        elif action == "dtype":
            out[name] = a.astype(draw(st.sampled_from(["uint8", "int32", "int64", "float32",
                                                       "float64", "int16"])))
        elif action == "shape":
            out[name] = a.reshape(-1)
        elif action == "drop":
            del out[name]
        else:
            out[name] = a[:0]
    return out


@st.composite
def mutated(draw, base) -> tuple[Any, dict, bool]:
    manifest, arrays = base
    which = draw(st.sampled_from(["manifest", "ints", "arrays", "both"]))
    m = draw(int_mutation(manifest)) if which == "ints" else \
        draw(manifest_mutation(manifest)) if which != "arrays" else copy.deepcopy(manifest)
    a = draw(array_mutation(arrays)) if which != "manifest" else dict(arrays)
    return m, a, draw(st.booleans())


def load_and_run(path: Path) -> str:
    """'ran', or the FarcError subclass that refused the program; anything else raises."""
    x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype(np.float32)
    try:
        prog = Program.load(path)
        Emulator(prog).run({"x": x})
    except FarcError as exc:
        assert "\n" not in str(exc), str(exc)
        return type(exc).__name__
    return "ran"


@pytest.fixture
def bounded(monkeypatch):
    monkeypatch.setenv("FARC_MAX_MEMORY", BUDGET)
    monkeypatch.setenv("FARC_MAX_STEPS", "200000")


def _bounded_call(path: Path) -> str:
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        outcome = load_and_run(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - t0
    assert peak < PEAK_LIMIT, f"peak {peak / 2**20:.0f} MiB for {outcome}"
    assert elapsed < TIME_LIMIT_S, f"{elapsed:.1f} s for {outcome}"
    return outcome


def test_the_unmutated_program_runs(base, bounded, tmp_path: Path) -> None:
    """The fuzz's starting point is valid: every refusal below is caused by the mutation."""
    write_farc(tmp_path / "p.farc", copy.deepcopy(base[0]), base[1], refresh_table=True)
    assert _bounded_call(tmp_path / "p.farc") == "ran"


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_mutated_programs_run_or_raise_farc_error(base, bounded, tmp_path: Path,
                                                  data) -> None:
    manifest, arrays, refresh = data.draw(mutated(base))
    path = tmp_path / "m.farc"
    write_farc(path, manifest, arrays, refresh)
    _bounded_call(path)


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 255)), min_size=1,
                     max_size=8))
def test_corrupted_bytes_run_or_raise_farc_error(base, bounded, tmp_path: Path,
                                                 cuts) -> None:
    """Bytes of the file itself flipped: headers, sizes, the manifest, array data."""
    path = tmp_path / "b.farc"
    write_farc(path, copy.deepcopy(base[0]), base[1], refresh_table=True)
    raw = bytearray(path.read_bytes())
    for pos, val in cuts:
        raw[pos % len(raw)] = val
    path.write_bytes(bytes(raw))
    _bounded_call(path)
