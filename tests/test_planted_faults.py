"""Planted faults: each one, planted in the compiler, the emulator or a compiled program,
must make `farc verify` fail and, with `per_layer=True`, name the layer it was planted in
(issue 11, item 4; the table is in docs/verify.md, "Planted faults").

Faults are planted with `monkeypatch` on the real functions and methods (never by editing
source), or by editing a compiled program. The model is a tiny digits FAR (one block, two
heads of 16 units, 5 tokens; every bias non-zero so a dropped bias shows), compiled for
ISAAC's converters with 8-bit weights and inputs on 32 x 32 crossbars (so fc2, K = 128,
spans four row tiles) with flip encoding on. Weights are random, so the float top-1 check
is off (`min_agreement=0`): the exact checks must catch every fault.

Packing faults in the compiler would first trip `Program.validate` (the column sums it
recomputes from the codes, test_packing_fault_trips_the_validator); the cases below make the
faulty packing self-consistent (colsum recounted from the codes, as a compiler deriving it
from its own packing would), so that the program is valid and only verify can tell."""

from __future__ import annotations

import copy
import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch

from farc.check.verify import References, Tolerances, verify

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("tvm") is None,
                                 reason="apache-tvm is not installed")]

IMAGES = 16
BITLEVEL = 4
TOL = Tolerances(min_agreement=0.0)
FAST, BITLEVEL_PATH, DIVERGENCE = ("layer integers (fast path)", "layer integers (bitlevel path)",
                                   "per-layer divergence")
LOGITS = "emulator vs reference logits"
CALIB = "calibration"
NAMED = re.compile(r"first (?:wrong|diverging) layer (\S+) \(instruction")
CALIB_NAMED = re.compile(r"; layer (\S+): ")
LOSSY = {"adc.bits": 5, "adc.range": "calibrated", "adc.flip": False}
"""A calibrated 5-bit ADC without flip (full-range step 4: doubled steps stay valid)."""
PER_SLICE = {**LOSSY, "adc.bits": 4, "adc.granularity": "slice", "adc.step_rule": "uniform",
             "adc.statistic": "percentile", "adc.percentile": 99.0}
"""The calibrated per-slice policy (the default below lossless) on a 4-bit ADC at a 99th
percentile: every step above 1, and the top slice's the smallest."""

PATCH, PRE, POST, HEAD = ("patch_embed.proj", "blocks.0.far.pre_proj", "blocks.0.far.post_proj",
                          "head")
FWD0, BWD0, BWD1 = "blocks.0.far.lstm_fwd.0", "blocks.0.far.lstm_bwd.0", "blocks.0.far.lstm_bwd.1"
HP0, HP1 = "blocks.0.far.head_proj.0", "blocks.0.far.head_proj.1"
FC1, FC2 = "blocks.0.mlp.fc1", "blocks.0.mlp.fc2"


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls: torch's second thread only contends on this 2-core machine (verify
    measured 2x faster with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_far():
    from farc.models.deit import DeiTConfig
    from farc.models.far import FAR, FARConfig

    cfg = DeiTConfig(img_size=8, patch_size=4, in_chans=1, num_classes=10, embed_dim=32,
                     depth=1, num_heads=2)
    torch.manual_seed(5)
    model = FAR(FARConfig.dense(cfg)).eval()
    with torch.no_grad():  # random init zeroes Linear biases: a dropped one would not show
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
    return model


def fault_target(**overrides):
    """ISAAC's converters (2-bit cells, 1-bit DAC, 8-bit full-range ADC, flip encoding),
    ISAAC's offset inputs (so a zero-point fault has a zero point to drop), 8-bit weights
    and inputs, differential mapping, 32 x 32 crossbars: lossless."""
    from farc.targets import load_target

    return load_target("isaac").with_overrides(**{
        "quant.weight_bits": 8, "quant.input_bits": 8, "quant.mapping": "differential",
        "crossbar.rows": 32, "crossbar.cols": 32, "adc.flip": True,
        "quant.input_encoding": "offset", **overrides})


def compile_tiny(model, target=None, validate: bool = True):
    from farc.compiler import CompileOptions, compile_checkpoint

    return compile_checkpoint(model, target or fault_target(),
                              CompileOptions(calib_samples=32, validate=validate))


@pytest.fixture(scope="module")
def float_onnx(tiny_far, tmp_path_factory):
    from farc.check.onnx_export import export_onnx

    return export_onnx(tiny_far, tmp_path_factory.mktemp("faults") / "tiny.float.onnx")


@pytest.fixture(scope="module")
def digits():
    from farc.data import load_split

    x, y = load_split("digits", "test")
    return x[:IMAGES].numpy(), y[:IMAGES].numpy()


@pytest.fixture(scope="module")
def base_program(tiny_far):
    """The unaltered program (emulator faults run it; program edits start from a copy)."""
    return compile_tiny(tiny_far)


# ----------------------------------------------------------------------------- helpers
def run_verify(program, model, float_onnx, digits):
    from farc.check.reference import build_reference

    x, y = digits
    refs = References(float_onnx, build_reference(model, program), model=model)
    return verify(program, x, y, refs, tol=TOL, bitlevel_samples=BITLEVEL, per_layer=True)


def named(report) -> dict[str, str]:
    """Failed per-layer check -> the layer its detail names (the calibration check: the
    first of the layers it lists)."""
    out = {}
    for c in report.checks:
        if c.passed is False and c.name in (FAST, BITLEVEL_PATH, DIVERGENCE):
            out[c.name] = NAMED.search(c.detail).group(1)
        elif c.passed is False and c.name == CALIB:
            out[c.name] = CALIB_NAMED.search(c.detail).group(1)
    return out


def calib_named(report) -> list[str]:
    """Every layer the calibration check lists."""
    c = next(c for c in report.checks if c.name == CALIB)
    return CALIB_NAMED.findall(c.detail) if c.passed is False else []


def copy_program(program):
    from farc.runtime.program import Program

    return Program(copy.deepcopy(program.manifest),
                   {k: v.copy() for k, v in program.arrays.items()})


def recount_colsums(program):
    """colsum of every layer recounted from its codes (what a compiler deriving it from its
    own, faulty, packing would store), then validated: a valid-but-wrong program."""
    from farc.runtime.numerics import decode_weights

    for L in program.layers:
        a = {k: program.arrays[v] for k, v in L["arrays"].items()}
        rt, ct, rows, cols = a["codes"].shape
        flat = a["codes"].transpose(0, 2, 1, 3).reshape(rt * rows, ct * cols)
        q = decode_weights(flat[:L["K"], :a["col_out"].size], a["col_out"], a["col_slice"],
                           a["col_sign"], L["N"], L["crossbar"]["cell_bits"],
                           L["quant"]["weight_bits"], L["quant"]["mapping"])
        program.arrays[L["arrays"]["colsum"]] = q.sum(axis=0).astype(np.int64)
    program.validate()
    return program


def layer_id(program, name: str) -> int:
    return next(i for i, L in enumerate(program.layers) if L["name"] == name)


class Scope:
    """Which crossbar layer a compiler pass is working on, recorded by wrapping the first
    helper the pass calls with the layer's Relax function."""

    def __init__(self, monkeypatch, module, helper: str) -> None:
        self.layer: str | None = None
        original = getattr(module, helper)

        def tracked(func, *args, **kwargs):
            self.layer = str(func.attrs["farc.layer"])
            return original(func, *args, **kwargs)

        monkeypatch.setattr(module, helper, tracked)


def fault_in(monkeypatch, owner, name: str, scope: Scope, layer: str,
             faulty: Callable[..., Any]) -> None:
    """owner.name becomes faulty(original, *args) while `scope` is on `layer`."""
    original = getattr(owner, name)

    def maybe(*args, **kwargs):
        if scope.layer == layer:
            return faulty(original, *args, **kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, maybe)


def tile_pass_fault(monkeypatch, layer: str, name: str, faulty) -> None:
    from farc.passes import tile_crossbar

    fault_in(monkeypatch, tile_crossbar, name, Scope(monkeypatch, tile_crossbar, "attr_array"),
             layer, faulty)


def emulator_fault(monkeypatch, layer: str, change: Callable[[Any], None]) -> None:
    """The emulator prepares `layer` (farc.runtime.crossbar.prepare_layer), then `change`
    alters what it prepared."""
    from farc.runtime import crossbar

    original = crossbar.prepare_layer

    def prepare(index, L, *args, **kwargs):
        pl = original(index, L, *args, **kwargs)
        if L["name"] == layer:
            change(pl)
        return pl

    monkeypatch.setattr(crossbar, "prepare_layer", prepare)


# ----------------------------------------------------------------------------- the faults
# Each plant(monkeypatch, model, base_program) returns the program to verify (compiling
# anew when the fault sits in the compiler).

def swap_columns(monkeypatch, model, base):
    """tile pass: two physical columns of fc1 (the G+ top slices of outputs 0 and 1)
    swapped."""
    def faulty(original, levels, p):
        lv = levels.copy()
        a = p.slices - 1
        b = a + p.slices * p.signs
        lv[:, [a, b]] = lv[:, [b, a]]
        return original(lv, p)

    tile_pass_fault(monkeypatch, FC1, "tile_codes", faulty)
    return recount_colsums(compile_tiny(model, validate=False))


def shift_slice(monkeypatch, model, base):
    """encode_columns: the head's weight slices one off (slice s holds slice s+1's bits,
    the top slice is left empty)."""
    def faulty(original, q, p):
        out = original(q, p).reshape(q.shape[0], -1, p.signs, p.slices).copy()
        out[..., :-1] = out[..., 1:]
        out[..., -1] = 0
        return out.reshape(q.shape[0], -1)

    tile_pass_fault(monkeypatch, HEAD, "encode_columns", faulty)
    return recount_colsums(compile_tiny(model, validate=False))


def permute_gates(monkeypatch, model, base):
    """legalize_lstm: lstm_bwd.0's stacked [W_ih; W_hh] and bias with the gate blocks in
    order f, i, g, o instead of PyTorch's i, f, g, o (the cell math still reads i, f, g, o)."""
    from farc.passes import legalize_lstm

    original = legalize_lstm._cell_function

    def faulty(layer, batch, w, b):
        if layer == BWD0:
            h = w.shape[1] // 4
            order = np.r_[h:2 * h, 0:h, 2 * h:4 * h]
            w, b = w[:, order], b[order]
        return original(layer, batch, w, b)

    monkeypatch.setattr(legalize_lstm, "_cell_function", faulty)
    return compile_tiny(model)


def run_backward_forward(monkeypatch, model, base):
    """emitter: the backward LSTM of head 1 (lstm_bwd.1) gathers and scatters its steps in
    forward order (its loop entries lose `reverse`)."""
    from farc.passes.emit_tile_program import _Emitter

    original = _Emitter.loop

    def faulty(self, group):
        original(self, group)
        loop = self.code[-1]
        for move in (loop["gather"][3], loop["scatter"][3]):  # FWD0, BWD0, FWD1, BWD1
            assert move["reverse"]
            move["reverse"] = False

    monkeypatch.setattr(_Emitter, "loop", faulty)
    return compile_tiny(model)


def drop_bias(monkeypatch, model, base):
    """tile pass: head_proj.1 packed without its bias (composite_parts returns none)."""
    tile_pass_fault(monkeypatch, HP1, "composite_parts",
                    lambda original, func: (original(func)[0], None))
    return compile_tiny(model)


def stack_heads_reversed(monkeypatch, model, base):
    """emitter: the per-head outputs stacked (torch.stack(outs, dim=2)) in reverse head
    order, so post_proj sees head 1's channels where head 0's belong."""
    from farc.passes.emit_tile_program import Tup, _Emitter

    original = _Emitter._op_stack
    monkeypatch.setattr(_Emitter, "_op_stack", lambda self, call, args: original(
        self, call, [Tup(tuple(reversed(args[0].items)))]))
    return compile_tiny(model)


def split_gates_wrong(monkeypatch, model, base):
    """emitter: every LSTM cell's gate split hands out i and f swapped (digital side)."""
    from farc.passes.emit_tile_program import Tup, _Emitter

    original = _Emitter._op_split

    def faulty(self, call, args):
        parts = original(self, call, args)
        items = parts.items
        return Tup((items[1], items[0], *items[2:])) if len(items) == 4 else parts

    monkeypatch.setattr(_Emitter, "_op_split", faulty)
    return compile_tiny(model)


def floor_weights(monkeypatch, model, base):
    """quantize pass: the head's weights rounded toward -inf instead of to nearest."""
    from farc.passes import quantize_crossbar

    def faulty(original, w, bits):
        q, s_w = original(w, bits)
        qw = 2 ** (bits - 1) - 1
        return np.clip(np.floor(w / s_w), -qw, qw).astype(q.dtype), s_w

    fault_in(monkeypatch, quantize_crossbar, "quantize_weights",
             Scope(monkeypatch, quantize_crossbar, "composite_parts"), HEAD, faulty)
    return compile_tiny(model)


def scale_input_off_by_one_step(monkeypatch, model, base):
    """quantize pass: fc2's input scale one step too large, s_x * (1 + 1/Qx)."""
    from farc.passes import quantize_crossbar

    def faulty(original, r, bits):
        return original(r, bits) * (1 + 1 / (2 ** (bits - 1) - 1))

    fault_in(monkeypatch, quantize_crossbar, "input_scale",
             Scope(monkeypatch, quantize_crossbar, "composite_parts"), FC2, faulty)
    return compile_tiny(model)


def double_adc_step_in_compiler(monkeypatch, model, base):
    """tile pass: fc2's ADC steps doubled, on a calibrated 5-bit ADC without flip (full-range
    step 4, so the doubled calibrated steps stay valid)."""
    from farc.passes import tile_crossbar
    from farc.runtime.numerics import XbarParams

    def faulty(original, self, row_tiles, pmax):
        return [2 * s for s in original(self, row_tiles, pmax)]

    fault_in(monkeypatch, XbarParams, "adc_steps",
             Scope(monkeypatch, tile_crossbar, "attr_array"), FC2, faulty)
    program = compile_tiny(model, fault_target(**LOSSY))
    assert all(s >= 2 for s in program.layers[layer_id(program, FC2)]["adc_step"])
    return program


def ignore_input_percentile(monkeypatch, model, base):
    """calibration: fc1's input range reported as max |x| although the policy is the 99th
    percentile of |x|."""
    from farc.compiler import driver

    original = driver.calibrate

    def faulty(*args, **kwargs):
        calib = original(*args, **kwargs)
        calib[FC1].percentile = calib[FC1].absmax
        return calib

    monkeypatch.setattr(driver, "calibrate", faulty)
    return compile_tiny(model, fault_target(**{"quant.calibration": "percentile",
                                               "quant.percentile": 99.0}))


def ignore_adc_percentile(monkeypatch, model, base):
    """tile pass: fc1's ADC ranges measured as the largest partial sums although the
    statistic is the 99th percentile (calibrated per-slice policy)."""
    import dataclasses

    def faulty(original, q, x, in_scale, p):
        return original(q, x, in_scale, dataclasses.replace(
            p, adc=dataclasses.replace(p.adc, statistic="max")))

    tile_pass_fault(monkeypatch, FC1, "calibrated_ranges", faulty)
    return compile_tiny(model, fault_target(**PER_SLICE))


def calibrate_on_wrong_split(monkeypatch, model, base):
    """driver: calibration images taken from the validation split while the provenance
    says train (its sha256 is of the images used)."""
    from farc.compiler import driver
    from farc.data import load_split

    monkeypatch.setattr(driver, "_calib_images", lambda model, opts: load_split(
        "digits", "val")[0][: opts.calib_samples].float())
    return compile_tiny(model, fault_target(**PER_SLICE))


def permute_slice_steps(monkeypatch, model, base):
    """tile pass: fc2's per-slice ADC steps reversed between its weight slices in every
    row tile (each step still valid)."""
    from farc.passes import tile_crossbar
    from farc.runtime.numerics import XbarParams

    def faulty(original, self, row_tiles, pmax):
        return [list(reversed(r)) for r in original(self, row_tiles, pmax)]

    fault_in(monkeypatch, XbarParams, "adc_steps",
             Scope(monkeypatch, tile_crossbar, "attr_array"), FC2, faulty)
    program = compile_tiny(model, fault_target(**PER_SLICE))
    steps = program.layers[layer_id(program, FC2)]["adc_step"]
    assert any(r != r[::-1] for r in steps)  # the permutation changed something
    return program


def permute_codes(monkeypatch, model, base):
    """program: rows 0 and 5 of pre_proj's codes swapped after compilation (column sums
    unchanged, so the program stays valid)."""
    prog = copy_program(base)
    name = prog.layers[layer_id(prog, PRE)]["arrays"]["codes"]
    codes = prog.arrays[name]
    codes[:, :, [0, 5], :] = codes[:, :, [5, 0], :]
    prog.validate()
    return prog


def swap_fwd_bwd(monkeypatch, model, base):
    """program: the concat [fwd ; bwd] feeding head_proj.0 edited to [bwd ; fwd]."""
    prog = copy_program(base)
    code = prog.manifest["instructions"]
    lid = layer_id(prog, HP0)
    mvm = next(ins for ins in code if ins["op"] == "mvm" and ins["layer"] == lid)
    cat = next(ins for ins in code if ins.get("out") == mvm["in"][0])
    assert cat["op"] == "concat"
    cat["in"] = cat["in"][::-1]
    prog.validate()
    return prog


def unflip_noop(monkeypatch, model, base):
    """emulator: flip encoding applied when programming, never undone after the ADC."""
    from farc.runtime import crossbar

    monkeypatch.setattr(crossbar, "unflip", lambda *args, **kwargs: None)
    return base


def drop_zero_point(monkeypatch, model, base):
    """emulator: fc1's input zero-point correction (z * colsum) dropped."""
    def change(pl):
        pl.colsum = np.zeros_like(pl.colsum)

    emulator_fault(monkeypatch, FC1, change)
    return base


def double_adc_step_in_emulator(monkeypatch, model, base):
    """emulator: fc2's ADC digitises with twice the program's step."""
    def change(pl):
        pl.steps = pl.steps * 2
        pl.fold_step *= 2

    emulator_fault(monkeypatch, FC2, change)
    return base


def shift_rows(monkeypatch, model, base):
    """emulator: fc2's stored levels one row off across its four 32-row tiles (row k's
    levels on row k + 1, the last row wrapping to row 0)."""
    def change(pl):
        flat = pl.codes.reshape(pl.row_tiles * pl.rows, -1).copy()
        flat[:pl.K] = np.roll(flat[:pl.K], 1, axis=0)
        pl.codes = flat.reshape(pl.codes.shape)
        pl._levels = None

    emulator_fault(monkeypatch, FC2, change)
    return base


def shift_rescale(monkeypatch, model, base):
    """emulator: post_proj's per-column rescale s_x * s_w[n] applied one column off."""
    def change(pl):
        pl.scale = np.roll(pl.scale, 1)

    emulator_fault(monkeypatch, POST, change)
    return base


def dac_scale_off_by_one_step(monkeypatch, model, base):
    """emulator: pre_proj's inputs quantized with s_x * (1 + 1/Qx), the program's s_x
    unchanged."""
    def change(pl):
        pl.in_scale = pl.in_scale * (1 + 1 / (2 ** (pl.params.quant.input_bits - 1) - 1))

    emulator_fault(monkeypatch, PRE, change)
    return base


@dataclass(frozen=True)
class Fault:
    name: str
    plant: Callable[..., Any]
    expect: dict[str, str] = field(default_factory=dict)
    """Every per-layer check that must fail -> the layer it must name."""


ALL = (FAST, BITLEVEL_PATH, DIVERGENCE)

FAULTS = [
    # compiler: packing (colsum recounted so the program is valid), lowering, quantization
    Fault("columns_swapped", swap_columns, dict.fromkeys(ALL, FC1)),
    Fault("slice_shifted", shift_slice, dict.fromkeys(ALL, HEAD)),
    Fault("lstm_gates_permuted", permute_gates, dict.fromkeys(ALL, BWD0)),
    # the layer's integers are right on the inputs it got; its input sequence is reversed
    Fault("backward_loop_run_forward", run_backward_forward, {DIVERGENCE: BWD1}),
    # integers right (the bias comes after them); the layer's output is off by the bias
    Fault("bias_dropped", drop_bias, {DIVERGENCE: HP1}),
    # every layer's arithmetic right; post_proj's input has the heads' channels swapped
    Fault("heads_concatenated_reversed", stack_heads_reversed, {DIVERGENCE: POST}),
    # digital gate math wrong: lstm_fwd.0 is the first cell run, and its input [x_t ; h]
    # carries a wrong h from step 1 on
    Fault("lstm_gates_split_wrong", split_gates_wrong, {DIVERGENCE: FWD0}),
    Fault("weights_floored", floor_weights, dict.fromkeys(ALL, HEAD)),
    # calibration: emulator and reference agree (the reference runs the program's scales
    # and steps); the calibration check, calibrating again from the float model, names it
    Fault("input_scale_off_by_one_step", scale_input_off_by_one_step, {CALIB: FC2}),
    Fault("adc_step_doubled_in_compiler", double_adc_step_in_compiler, {CALIB: FC2}),
    Fault("input_percentile_ignored", ignore_input_percentile, {CALIB: FC1}),
    Fault("adc_percentile_ignored", ignore_adc_percentile, {CALIB: FC1}),
    # every layer after the patch embedding sees other activations (digits' pixels span
    # [-1, 1] in both splits); the check lists each layer that differs
    Fault("calibrated_on_wrong_split", calibrate_on_wrong_split, {CALIB: PRE}),
    Fault("per_slice_steps_permuted", permute_slice_steps, {CALIB: FC2}),
    # programs edited after compilation (still valid)
    Fault("codes_permuted", permute_codes, dict.fromkeys(ALL, PRE)),
    # head_proj.0's input has [bwd ; fwd] where [fwd ; bwd] belongs
    Fault("fwd_bwd_concatenated_reversed", swap_fwd_bwd, {DIVERGENCE: HP0}),
    # emulator: faults only the bit-level path sees (every layer here is lossless, so the
    # fast path runs the main pass; the divergence check reads the bit-level traces)
    # lstm_bwd.0 is the first layer run that has a flipped column
    # (test_unflip_fault_names_the_first_flipped_layer)
    Fault("flip_not_undone", unflip_noop, {BITLEVEL_PATH: BWD0, DIVERGENCE: BWD0}),
    Fault("zero_point_dropped", drop_zero_point, {BITLEVEL_PATH: FC1, DIVERGENCE: FC1}),
    Fault("adc_step_doubled_in_emulator", double_adc_step_in_emulator,
          {BITLEVEL_PATH: FC2, DIVERGENCE: FC2}),
    Fault("row_tile_boundary_off_by_one", shift_rows, {BITLEVEL_PATH: FC2, DIVERGENCE: FC2}),
    # emulator: both paths; the rescale follows the integers, so only its output differs
    Fault("rescale_one_column_off", shift_rescale, {DIVERGENCE: POST}),
    Fault("dac_scale_off_by_one_step", dac_scale_off_by_one_step, dict.fromkeys(ALL, PRE)),
]


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.name)
def test_planted_fault_fails_verify_and_names_the_layer(fault, monkeypatch, tiny_far,
                                                        base_program, float_onnx, digits):
    program = fault.plant(monkeypatch, tiny_far, base_program)
    report = run_verify(program, tiny_far, float_onnx, digits)
    failed = [c.name for c in report.checks if c.passed is False]
    print(f"\n{fault.name}: failed {failed}; named {named(report)}")
    assert not report.ok
    assert named(report) == fault.expect, report.failure_line()
    if CALIB in fault.expect and fault.name != "calibrated_on_wrong_split":
        assert calib_named(report) == [fault.expect[CALIB]]  # that layer only


def test_unaltered_tiny_program_passes(tiny_far, base_program, float_onnx, digits):
    """The baseline the faults are measured against: every check passes."""
    report = run_verify(base_program, tiny_far, float_onnx, digits)
    assert report.ok, report.failure_line()
    assert report.lossless and len(report.layers["bitlevel"]) == 12
    calib = next(c for c in report.checks if c.name == CALIB)
    assert calib.passed is True and "12 layers" in calib.detail, calib.detail


# ----------------------------------------------------------------------------- calibration data
def _calibration(program, model, **kwargs):
    from farc.check.calibration import check_calibration
    from farc.check.reference import build_reference
    from farc.check.verify import _calibration_check

    strict = kwargs.pop("strict", False)
    result = check_calibration(program, model, build_reference(model, program), **kwargs)
    return result, _calibration_check(result, strict)


@pytest.fixture(scope="module")
def npy_program(tiny_far, tmp_path_factory):
    """Compiled from a user's calibration file (compile --calib-npy), lossy per-slice ADC."""
    from farc.compiler import CompileOptions, compile_checkpoint

    path = tmp_path_factory.mktemp("calib") / "calib.npy"
    x = np.random.default_rng(3).uniform(-1, 1, (24, 1, 8, 8)).astype(np.float32)
    np.save(path, x)
    program = compile_checkpoint(tiny_far, fault_target(**PER_SLICE), CompileOptions(
        calib_samples=20, calib_images=torch.from_numpy(x), calib_source=str(path)))
    return program, path


def test_provenance_records_the_calibration(npy_program):
    program, path = npy_program
    rec = program.manifest["model"]["provenance"]["calibration"]
    assert rec["source"] == {"kind": "npy", "path": str(path)} and rec["samples"] == 20
    assert rec["adc"]["statistic"] == "percentile" and rec["adc"]["percentile"] == 99.0
    assert [n for n, _ in rec["draws"]][:2] == [PATCH, PRE] and len(rec["sha256"]) == 64
    fc2 = program.layers[layer_id(program, FC2)]
    assert len(fc2["calib"]["adc_range"]) == 4 and len(fc2["calib"]["adc_range"][0]) == 4
    assert fc2["calib"]["input_range"] > 0


def test_calibration_from_a_user_file_is_checked(npy_program, tiny_far):
    _, check = _calibration(npy_program[0], tiny_far)
    assert check.passed is True and str(npy_program[1]) in check.detail, check.detail


def test_mse_clip_points_are_recomputed_independently(tiny_far):
    """statistic 'mse': the calibration check's own least-squares search (restated from
    docs/numerics.md) finds every step the compiler chose; a doubled step is still named."""
    program = compile_tiny(tiny_far, fault_target(**{**PER_SLICE, "adc.statistic": "mse"}))
    _, check = _calibration(program, tiny_far)
    assert check.passed is True, check.detail
    fc2 = program.layers[layer_id(program, FC2)]
    fc2["adc_step"][0][-1] = 2 * fc2["adc_step"][0][-1]
    _, check = _calibration(program, tiny_far)
    assert check.passed is False and FC2 in check.detail, check.detail


def test_missing_or_changed_calibration_file_is_reported_not_failed(npy_program, tiny_far,
                                                                     tmp_path):
    """Verify says which check it could not run; only strict mode makes that a failure."""
    program, _ = npy_program
    gone = tmp_path / "gone.npy"
    _, check = _calibration(program, tiny_far, calib_npy=gone)
    assert check.passed is None and f"calibration file {gone} is missing" in check.detail
    _, strict = _calibration(program, tiny_far, calib_npy=gone, strict=True)
    assert strict.passed is False and strict.detail.startswith("could not run")
    other = tmp_path / "other.npy"
    np.save(other, np.zeros((20, 1, 8, 8), np.float32))
    _, check = _calibration(program, tiny_far, calib_npy=other)
    assert check.passed is None and "sha256 differs" in check.detail


def test_program_without_a_calibration_record_is_reported(base_program, tiny_far):
    old = copy_program(base_program)
    del old.manifest["model"]["provenance"]["calibration"]
    _, check = _calibration(old, tiny_far)
    assert check.passed is None and "records no calibration" in check.detail


def test_unflip_fault_names_the_first_flipped_layer(base_program):
    """Why flip_not_undone names lstm_bwd.0: in execution order (patch_embed, pre_proj,
    lstm_fwd.0, lstm_bwd.0, ...) it is the first layer with a column stored complemented."""
    from farc.runtime.crossbar import prepare_layer

    from farc.check.layers import traced_run

    x = np.zeros((1, 1, 8, 8), np.float32)
    order = [base_program.layers[i]["name"] for i in traced_run(base_program, x, "auto")]
    flipped = [name for name in order if prepare_layer(
        0, base_program.layers[layer_id(base_program, name)], base_program.arrays).flip.any()]
    assert order[:4] == [PATCH, PRE, FWD0, BWD0] and flipped[0] == BWD0


def test_packing_fault_trips_the_validator(monkeypatch, tiny_far):
    """Without the colsum recount, a packing fault never reaches verify: the compiler's
    exit validation recomputes the column sums from the codes and names the layer."""
    from farc.errors import ProgramError

    def faulty(original, levels, p):
        lv = levels.copy()
        lv[:, [p.slices - 1, 2 * p.slices * p.signs - 1]] = lv[:, [2 * p.slices * p.signs - 1,
                                                                   p.slices - 1]]
        return original(lv, p)

    tile_pass_fault(monkeypatch, FC1, "tile_codes", faulty)
    with pytest.raises(ProgramError, match=r"\(blocks\.0\.mlp\.fc1\).*colsum\[\d+\] = "):
        compile_tiny(tiny_far)


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_far, tmp_path_factory):
    from farc.models.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("faults_cli") / "tiny_far.pt"
    save_checkpoint(path, tiny_far, {"note": "tiny random FAR of tests/test_planted_faults.py"})
    return path


def _cli_verify(program_path, checkpoint, capsys) -> str:
    from farc.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["verify", str(program_path), "--checkpoint", str(checkpoint), "--samples",
              str(IMAGES), "--bitlevel-samples", str(BITLEVEL), "--per-layer",
              "--min-agreement", "0"])
    assert exc.value.code == 1
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_cli_exits_1_on_a_program_altered_after_compilation(monkeypatch, tiny_far, base_program,
                                                            tiny_checkpoint, tmp_path, capsys):
    """A valid-but-wrong .farc file: `farc verify --per-layer` exits 1 naming pre_proj."""
    path = permute_codes(monkeypatch, tiny_far, base_program).save(tmp_path / "bad.farc")
    line = _cli_verify(path, tiny_checkpoint, capsys)
    assert line.startswith("farc: error: verify failed: layer integers (fast path): first "
                           f"wrong layer {PRE} (instruction 18)")
    assert f"per-layer divergence: first diverging layer {PRE} (instruction 18)" in line


def test_cli_strict_calibration_exits_1_without_the_calibration_file(
        npy_program, tiny_checkpoint, tmp_path, capsys):
    program, _ = npy_program
    path = program.save(tmp_path / "npy.farc")
    from farc.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["verify", str(path), "--checkpoint", str(tiny_checkpoint), "--samples", "4",
              "--bitlevel-samples", "1", "--min-agreement", "0", "--strict-calibration",
              "--calib-npy", str(tmp_path / "gone.npy")])
    assert exc.value.code == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "calibration: could not run: calibration file" in line and "gone.npy" in line


def test_cli_exits_1_on_an_emulator_fault(monkeypatch, tiny_far, base_program, tiny_checkpoint,
                                          tmp_path, capsys):
    """An emulator that never undoes the flip encoding: only the bit-level sample sees it."""
    path = base_program.save(tmp_path / "good.farc")
    unflip_noop(monkeypatch, tiny_far, base_program)
    line = _cli_verify(path, tiny_checkpoint, capsys)
    assert line.startswith("farc: error: verify failed: layer integers (bitlevel path): "
                           f"first wrong layer {BWD0} (instruction 29.")


# ----------------------------------------------------------------------------- unaltered
# puma's 8-bit full-range ADC (no flip, 16-bit inputs) once made a correct program fail the
# free-running logits check: numpy's and torch's digital ops an ulp apart grew through the
# lossy ADC to 0.4 relative at the logits. Verify now checks lossy programs layer by layer
# (divergence from a reference fed the emulator's own outputs), and this test holds on all
# three targets.


@pytest.mark.parametrize("target_name", ["isaac", "puma", "neurosim_rram"])
@pytest.mark.parametrize("kind", ["far_digits", "deit_digits"])
def test_unaltered_digits_program_passes_on_shipped_target(kind, target_name, request):
    """Must show (issue 11): the unaltered digits FAR and DeiT (random weights) compiled for
    each shipped target pass every exact check: per-layer integers on both MVM paths,
    emulator vs reference logits and top-1, on the digits test split (64 images; 8 on puma,
    whose 16-bit lossy layers all take the bit-level path)."""
    from farc.targets import load_target

    from farc.check.verify import resolve_references
    from farc.compiler import CompileOptions, compile_checkpoint
    from farc.data import load_split

    model = request.getfixturevalue(kind)
    program = compile_checkpoint(model, load_target(target_name), CompileOptions(calib_samples=64))
    n = 8 if target_name == "puma" else 64
    x, y = load_split("digits", "test")
    x, y = x[:n].numpy(), y[:n].numpy()
    report = verify(program, x, y, resolve_references(program, None, model=model), tol=TOL,
                    bitlevel_samples=BITLEVEL)
    for path in ("fast", "bitlevel"):
        assert len(report.layers[path]) == len(program.layers)
        assert all(it.ok for it in report.layers[path]), report.failure_line()
    assert not any(d.diverged for d in report.divergence)
    assert report.ok, report.failure_line()


SETTINGS = {
    "lossless": {"adc.bits": 16, "adc.range": "full"},
    "adc6_slice": {"adc.bits": 6, "adc.range": "calibrated", "adc.granularity": "slice",
                   "adc.step_rule": "uniform", "adc.statistic": "percentile"},
    "adc5_slice": {"adc.bits": 5, "adc.range": "calibrated", "adc.granularity": "slice",
                   "adc.step_rule": "uniform", "adc.statistic": "percentile"},
}
"""Issue 26's settings: a lossless ADC (16 bits, full range: wide enough on every target,
signed or not), and the calibrated per-slice policy at 6 and at 5 bits."""


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("target_name", ["isaac", "puma", "neurosim_rram"])
@pytest.mark.parametrize("kind", ["far_digits", "deit_digits"])
def test_unaltered_programs_pass_lossless_and_lossy(kind, target_name, setting, request):
    """Must show (issue 26): the unaltered digits FAR and DeiT pass every exact check on each
    shipped target, lossless and lossy (6-bit calibrated per slice, 5-bit), on 8 digits
    test images (the lossy 16-bit layers of isaac and puma all take the bit-level path)."""
    from farc.targets import load_target

    from farc.check.verify import resolve_references
    from farc.compiler import CompileOptions, compile_checkpoint
    from farc.data import load_split

    model = request.getfixturevalue(kind)
    target = load_target(target_name).with_overrides(**SETTINGS[setting])
    assert target.xbar.full_range_lossless == (setting == "lossless")
    program = compile_checkpoint(model, target, CompileOptions(calib_samples=16))
    x, y = load_split("digits", "test")
    x, y = x[:8].numpy(), y[:8].numpy()
    report = verify(program, x, y, resolve_references(program, None, model=model), tol=TOL,
                    bitlevel_samples=BITLEVEL)
    for path in ("fast", "bitlevel"):
        assert all(it.ok for it in report.layers[path]), report.failure_line()
    assert report.ok, report.failure_line()
