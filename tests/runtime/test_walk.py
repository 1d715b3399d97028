"""The one static walk (runtime/walk.py): shapes as the emulator sees them."""

from __future__ import annotations

import numpy as np
import pytest
from farc.runtime.builder import make_program
from farc.runtime.counters import static_counts
from farc.runtime.emulator import Emulator
from farc.runtime.walk import walk

from farc.errors import ProgramError


def test_loop_temporaries_stay_in_the_body() -> None:
    """A body temporary named like an outer register does not replace it after the loop
    (only carries and scatters leave the body), as in the emulator."""
    ins = [{"op": "input", "name": "x", "out": "x"},
           {"op": "zeros", "in": ["x"], "shape": [3], "out": "s"},
           {"op": "slice", "in": ["x"], "axis": 1, "start": 0, "stop": 2, "out": "t"},
           {"op": "loop", "count": {"reg": "x", "axis": 1}, "carry": ["s"],
            "gather": [{"src": "x", "axis": 1, "dst": "xt"}],
            "body": [{"op": "add", "in": ["s", "xt"], "out": "t"},
                     {"op": "tanh", "in": ["t"], "out": "s"}],
            "scatter": []},
           {"op": "output", "name": "y", "in": ["t"]}]
    prog = make_program(ins, {"x": [6, 3]}, {"y": [None]})
    emu = Emulator(prog)
    out = emu.run({"x": np.ones((2, 6, 3), np.float32)})
    steps = list(walk(prog, batch=2))
    assert steps[-1].in_shapes == (out["y"].shape,) == ((2, 2, 3),)
    assert [s.trips for s in steps if s.path[0] == 3] == [6, 6, 1]
    assert static_counts(prog, 2).static_part() == emu.counters.static_part()


def test_unknown_input_dims_need_a_given_shape() -> None:
    prog = make_program([{"op": "input", "name": "x", "out": "x"},
                         {"op": "output", "name": "y", "in": ["x"]}], {"x": [None, 3]},
                        {"y": [None, 3]})
    with pytest.raises(ProgramError, match=r"input 'x' has unknown dims \[None, None, 3\]"):
        list(walk(prog))
    assert next(s.out_shape for s in walk(prog, given={"x": (4, 5, 3)})) == (4, 5, 3)
