"""Resource bounds of one emulator run, from the manifest alone (docs/bad-inputs.md).

Before the first instruction runs, the one static walker (runtime/walk.py) follows every
register's shape at the batch really given: each register (float32) and each loop's
gather/scatter buffers must fit the memory budget, and the instructions executed (loop
bodies once per trip) must fit the step budget (farc/limits.py). A hostile loop over a
register of a billion steps, or a zeros of a trillion elements, is refused here instead of
running for days or allocating until the machine dies."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from farc.errors import EmulatorError, FarcError
from farc.limits import check_memory, check_steps, max_steps

from .walk import Shape, numel, walk

FLOAT_BYTES = 4
"""Registers hold float32."""


def check_run_bounds(manifest: dict[str, Any], batch: int = 1,
                     given: Mapping[str, Shape] | None = None,
                     error: type[FarcError] = EmulatorError) -> int:
    """Raise `error` when a run at this batch (or these input shapes) would exceed the
    memory or step budget, or when the program's shapes do not agree; returns the number
    of instruction executions."""
    steps, budget = 0, max_steps()
    try:
        for st in walk(manifest, batch=batch, given=given):
            where = f"instruction {'.'.join(map(str, st.path))} ({st.instr['op']})"
            steps += st.trips * (1 + st.count)
            if steps > budget:
                check_steps(steps, f"the program (at {where})", error)
            if st.out_shape is not None:
                check_memory(FLOAT_BYTES * numel(st.out_shape),
                             f"{where}: register {list(st.out_shape)}", error)
            if st.count:
                check_memory(FLOAT_BYTES * st.count * st.loop_io,
                             f"{where}: {st.count:,} steps of gathers and scatters", error)
    except (ValueError, IndexError, ZeroDivisionError, OverflowError) as exc:
        raise error(f"the program's shapes do not agree ({type(exc).__name__}: {exc})"
                    ) from None
    return steps
