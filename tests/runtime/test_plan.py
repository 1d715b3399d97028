"""The step plan (runtime/plan.py) against the interpreter, the definition: outputs bit for bit
and counters equal, on hand-built FAR blocks over the quantization settings, on every golden
program (tests/golden/programs.py), across batch sizes and repeated runs."""

from __future__ import annotations

import numpy as np
import pytest
from farc.runtime import plan as plan_mod
from farc.runtime.emulator import Emulator, gelu
from farc.runtime.handmade import FarBlockWeights, far_block_program
from xbar_flat import xp

from farc.errors import EmulatorError

LOSSLESS = xp(rows=32, cols=64, adc_bits=10)


def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape and a[k].dtype == b[k].dtype
        assert a[k].tobytes() == b[k].tobytes(), k


def check(prog, batches: list[np.ndarray], name: str = "x", **kw) -> Emulator:
    """Run the plan and the interpreter on the same batches in order; outputs equal after
    every run, counters after all of them."""
    fast, ref = Emulator(prog, **kw), Emulator(prog, step_plan=False, **kw)
    assert fast._plan is not None and ref._plan is None
    for x in batches:
        same(fast.run({name: x}), ref.run({name: x}))
    assert fast.counters.to_dict() == ref.counters.to_dict()
    return fast


def block(hidden, p=LOSSLESS, T=5, D=16, heads=2, seed=3):
    w = FarBlockWeights.random(D=D, heads=heads, hidden=hidden, seed=seed)
    x = np.random.default_rng(seed).normal(size=(4, T, D)).astype(np.float32)
    return far_block_program(w, T=T, p=p, calib=x), x


@pytest.mark.parametrize("p", [
    LOSSLESS,
    xp(rows=32, cols=64, adc_bits=10, input_encoding="sign_magnitude"),
    xp(rows=32, cols=64, adc_bits=10, input_encoding="bipolar"),
    xp(rows=32, cols=64, adc_bits=10, mapping="offset"),
    xp(rows=16, cols=32, adc_bits=10, dac_bits=2),
    xp(rows=32, cols=64, adc_bits=12, input_bits=10, weight_bits=6),
    xp(rows=16, cols=32, adc_bits=5),  # lossy: split path, loops run by the interpreter
], ids=["offset", "signmag", "bipolar", "offset-map", "dac2", "x10", "lossy"])
@pytest.mark.parametrize("hidden", [4, [(5, 3), (4, 4)]], ids=["equal", "pruned"])
def test_plan_equals_interpreter_on_far_blocks(p, hidden) -> None:
    prog, x = block(hidden, p)
    rng = np.random.default_rng(1)
    big = (rng.normal(size=(9, 5, 16)) * 3).astype(np.float32)
    check(prog, [x, x, big, x[:1], big])


def test_lstm_loops_run_as_kernels() -> None:
    """The FAR block's loop is matched (one cell per head and direction), pruned heads in
    groups of alike cells."""
    prog, _ = block([(5, 3), (4, 4)])
    emu = Emulator(prog)
    loops = [s.__self__ for s in emu._plan.steps if isinstance(getattr(s, "__self__", None),
                                                               plan_mod.LstmLoop)]
    assert len(loops) == 1
    assert sorted(len(g.cells) for g in loops[0].groups) == [1, 1, 2]


def test_outputs_are_not_buffers() -> None:
    """A later run reuses the plan's buffers; returned arrays stay as they were."""
    prog, x = block(4)
    emu = Emulator(prog)
    first = emu.run({"x": x})["y"]
    kept = first.copy()
    emu.run({"x": -x})
    assert first.tobytes() == kept.tobytes()


def test_saturated_and_special_inputs() -> None:
    prog, x = block(4)
    x = x * 100
    x[0, 0, :3] = [0.0, -0.0, 1e-42]
    check(prog, [x])


def test_when_the_plan_is_taken() -> None:
    prog, _ = block(4)
    assert Emulator(prog)._plan is not None
    for kw in ({"step_plan": False}, {"lockstep": False}, {"hoist": False}, {"trace": True},
               {"mvm_path": "bitlevel"}):
        assert Emulator(prog, **kw)._plan is None, kw


def test_errors_are_the_interpreters() -> None:
    prog, x = block(4)
    for emu in (Emulator(prog), Emulator(prog, step_plan=False)):
        with pytest.raises(EmulatorError, match="input 'x' has shape"):
            emu.run({"x": x[:, :, :3]})


def test_check_mode_compares(monkeypatch) -> None:
    """FARC_PLAN_CHECK=1 reruns every plan run on the interpreter and compares."""
    prog, x = block(4)
    monkeypatch.setenv(plan_mod.PLAN_CHECK_ENV, "1")
    emu = Emulator(prog)
    emu.run({"x": x})
    orig = plan_mod.LstmLoop._group

    def broken(self, *a):
        hist, c = orig(self, *a)
        hist[-1] += 1
        return hist, c

    monkeypatch.setattr(plan_mod.LstmLoop, "_group", broken)
    with pytest.raises(EmulatorError, match="step plan: output 'y' differs"):
        Emulator(prog).run({"x": x})


def test_gelu_into_is_gelu() -> None:
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(3, plan_mod.GELU_BLOCK + 77)) * 4).astype(np.float32)
    x[0, :10] = [np.inf, -np.inf, np.nan, 0.0, -0.0, 40.0, -40.0, 1e-42, -1e-42, 9.0]
    x[1, :4] = [-np.nan, 3e38, -3e38, 5.7]

    class Bufs:
        buf = plan_mod.Plan.buf

        def __init__(self) -> None:
            self._bufs: dict = {}

    out = np.empty_like(x)
    with np.errstate(all="ignore"):
        plan_mod.gelu_into(x, out, Bufs(), "g")
        want = gelu(x)
    np.testing.assert_array_equal(out.view(np.int32), want.view(np.int32))


@pytest.mark.tvm
def test_plan_equals_interpreter_on_golden_programs() -> None:
    """Every golden program but the noisy one (which the plan does not take), at two batch
    sizes: outputs and counters as the interpreter's."""
    from farc.data import load_split
    from tests.golden import programs as golden

    x = load_split("digits", "test")[0][:golden.IMAGES + 3].numpy()
    far = golden.model()
    for name, (_, _, noise) in golden.CASES.items():
        if noise:
            continue
        prog, _ = golden.build(name, far)
        check(prog, [x[:golden.IMAGES], x, x[:1]], name=prog.manifest["inputs"][0]["name"])
