"""Work done once per input shape (issue 16): the bound check and the events. Counters after
repeated runs must equal those of separate emulators, per shape, and the DAC pulses (data
dependent) must still be counted on every run."""

from __future__ import annotations

import numpy as np
from farc.runtime.counters import static_counts
from farc.runtime.emulator import Emulator
from farc.runtime.handmade import FarBlockWeights, far_block_program
from xbar_flat import xp

from farc.errors import EmulatorError


def _block():
    w = FarBlockWeights.random(D=16, heads=2, hidden=[(5, 3), (4, 4)], seed=3)
    p = xp(rows=32, cols=64, adc_bits=10)
    x = np.random.default_rng(0).normal(size=(3, 7, 16)).astype(np.float32)
    return far_block_program(w, T=7, p=p, calib=x), x


def test_repeated_runs_count_like_fresh_emulators() -> None:
    prog, x = _block()
    x2 = np.random.default_rng(1).normal(size=(5, 7, 16)).astype(np.float32)
    emu = Emulator(prog)
    for xi in (x, x, x2, x, x2):
        emu.run({"x": xi})
    want = {}
    for xi in (x, x, x2, x, x2):
        one = Emulator(prog)
        one.run({"x": xi})
        for k, v in one.counters.to_dict().items():
            if isinstance(v, dict):
                d = want.setdefault(k, {})
                for kk, vv in v.items():
                    d[kk] = d.get(kk, 0) + vv
            else:
                want[k] = want.get(k, 0) + v
    assert emu.counters.to_dict() == want
    again = Emulator(prog)
    for _ in range(3):  # the cached events of a shape are the static ones
        again.run({"x": x2})
    want3 = static_counts(prog, batch=5)
    want3.add(static_counts(prog, batch=5), times=2)
    assert again.counters.static_part() == want3.static_part()


def test_bounds_still_checked_per_shape(monkeypatch) -> None:
    """A shape seen before under generous limits is checked again when the limits change."""
    prog, x = _block()
    emu = Emulator(prog)
    emu.run({"x": x})
    monkeypatch.setenv("FARC_MAX_STEPS", "10")
    try:
        emu.run({"x": x})
    except EmulatorError as exc:
        assert "FARC_MAX_STEPS" in str(exc)
    else:
        raise AssertionError("the step budget was not checked again")
