"""Validation of a tile program's manifest and arrays against docs/tile-program.md.

A program may come from a stranger, so nothing is trusted: every field the emulator reads
is type-checked here, every array referenced must exist with the documented dtype and shape,
layer geometry must follow the closed forms of docs/numerics.md, codes must be valid levels,
and every register must be written before it is read (loops included). Each failure is one
`ProgramError` line naming the place (instruction index and opcode, layer id), the offending
value and the limit."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from farc.errors import ConfigError, ProgramError
from farc.limits import MAX_CROSSBARS

from .bounds import check_run_bounds
from .isa import FORMAT, OPS, POOL_DIMS, POOL_MODES, REDUCE_MODES, VERSION
from .numerics import (
    STEP_DENOM,
    XbarParams,
    chip_crossbars,
    decode_weights,
    max_code,
    valid_step,
)
from .schema import AdcRange, DeviceSection, StepRule, parse_section, section_dict

ARRAY_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
ARRAY_DTYPES = ("uint8", "int32", "int64", "float32")
LAYER_KINDS = ("linear", "patch_embed", "conv", "lstm_cell", "classifier", "gru_cell",
               "gru_hidden")
LAYER_INTS = ("id", "K", "N", "row_tiles", "col_tiles", "replicas")


def validate_program(manifest: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Raise ProgramError on the first inconsistency; return None when the program is sound."""
    check_header(manifest)
    _check_array_table(manifest, arrays)
    for key in ("inputs", "outputs", "layers", "instructions"):
        _need(manifest, key, list, "manifest")
    _check_specs(manifest["inputs"], "inputs")
    _check_specs(manifest["outputs"], "outputs")
    _check_constants(manifest, arrays)
    for i, layer in enumerate(manifest["layers"]):
        _check_layer(i, layer, arrays)
    _check_layers_match_target(manifest)
    device_of(manifest)
    _check_crossbar_ids(manifest)
    _check_instructions(manifest)
    _check_static_bounds(manifest)


def _check_crossbar_ids(manifest: dict[str, Any]) -> None:
    """Crossbar ids are physical crossbars of the program's chip (a report or an occupancy
    map sizes its tables by them); a chip beyond MAX_CROSSBARS is not a real one."""
    chip = (manifest.get("target") or {}).get("chip")
    if chip is None:
        return
    try:
        n = chip_crossbars(chip)
    except (KeyError, TypeError, ValueError):
        raise ProgramError(f"manifest: target chip {str(chip)[:120]} needs tiles, "
                           "imas_per_tile and crossbars_per_ima (ints >= 1)") from None
    if n > MAX_CROSSBARS:
        raise ProgramError(f"manifest: target chip has {n:,} crossbars, over the limit of "
                           f"{MAX_CROSSBARS:,}")
    for i, layer in enumerate(manifest["layers"]):
        top = max((x for ids in layer["crossbars"] for x in ids), default=-1)
        if top >= n:
            raise ProgramError(f"layer {i} ({layer.get('name', '?')}): crossbar id {top} out "
                               f"of range, the target chip has {n:,} crossbars")


def _check_static_bounds(manifest: dict[str, Any]) -> None:
    """Register sizes and instruction executions at batch 1, from the manifest alone, when
    every input dimension is known (the emulator checks again at the batch it is given)."""
    if all(d is not None for s in manifest["inputs"] for d in s["shape"][1:]):
        check_run_bounds(manifest, error=ProgramError)


def _check_layers_match_target(manifest: dict[str, Any]) -> None:
    """Each layer records the sections it was packed with; the manifest's target is the
    chip the program was placed on. A layer may choose its own precision and ADC policy
    (per-layer precision), but not another array: its [crossbar] must be the chip's (an
    empty target, as in hand-built programs, states no chip)."""
    target = manifest.get("target") or {}
    if not target:
        return
    chip = section_dict(parse_section(type(XbarParams().crossbar), target.get("crossbar"),
                                      "crossbar", "manifest target", ProgramError))
    for i, layer in enumerate(manifest["layers"]):
        if layer["crossbar"] != chip:
            raise ProgramError(f"layer {i} ({layer.get('name', '?')}): crossbar "
                               f"{layer['crossbar']} but the program's chip has {chip}")


def device_of(manifest: dict[str, Any]) -> DeviceSection | None:
    """The target's [device] record as a DeviceSection (None: the ideal chip); a ProgramError
    naming the field when it is not one."""
    record = (manifest.get("target") or {}).get("device")
    if record is None:
        return None
    try:
        device = parse_section(DeviceSection, record, "device", "manifest target",
                               ProgramError)
    except ConfigError as exc:
        raise ProgramError(f"manifest target: [device] {exc}") from None
    return device if device.enabled else None


def check_header(manifest: Any) -> None:
    """Format string and version first: a wrong version must not read as a corrupt file."""
    if not isinstance(manifest, dict):
        raise ProgramError("manifest is not a JSON object")
    if manifest.get("format") != FORMAT:
        raise ProgramError(f"not a farc tile program: format {manifest.get('format')!r}, "
                           f"expected {FORMAT!r}")
    version = manifest.get("version")
    if version != VERSION:
        raise ProgramError(f"unsupported program version {version!r}; this farc reads "
                           f"version {VERSION} (recompile the model with this farc)")


def _need(d: dict, key: str, typ: type | tuple, where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise ProgramError(f"{where}: missing field {key!r}")
    v = d[key]
    if not isinstance(v, typ) or (isinstance(v, bool) and typ in (int, (int, float))):
        raise ProgramError(f"{where}: field {key!r} = {v!r} has the wrong type")
    return v


# ---------------------------------------------------------------- arrays and specs
def _check_array_table(manifest: dict, arrays: dict[str, np.ndarray]) -> None:
    table = _need(manifest, "arrays", dict, "manifest")
    for name in table:
        if not ARRAY_NAME.match(name):
            raise ProgramError(f"array name {name!r} is not allowed (letters, digits, _ . -)")
        if name not in arrays:
            raise ProgramError(f"array {name!r} is listed in the manifest but missing")
    for name, arr in arrays.items():
        if name not in table:
            raise ProgramError(f"array {name!r} is present but not listed in the manifest")
        entry = table[name]
        if not isinstance(entry, dict):
            raise ProgramError(f"array {name!r}: manifest entry is not an object")
        if str(arr.dtype) not in ARRAY_DTYPES or entry.get("dtype") != str(arr.dtype):
            raise ProgramError(f"array {name!r}: dtype {arr.dtype} but manifest says "
                               f"{entry.get('dtype')!r} (allowed: {', '.join(ARRAY_DTYPES)})")
        if entry.get("shape") != list(arr.shape):
            raise ProgramError(f"array {name!r}: shape {list(arr.shape)} but manifest says "
                               f"{entry.get('shape')!r}")


def _check_specs(specs: list, which: str) -> None:
    seen = set()
    for i, spec in enumerate(specs):
        where = f"{which}[{i}]"
        name = _need(spec, "name", str, where)
        shape = _need(spec, "shape", list, where)
        if name in seen:
            raise ProgramError(f"{where}: duplicate name {name!r}")
        seen.add(name)
        if not shape or shape[0] is not None:
            raise ProgramError(f"{where} {name!r}: shape {shape} must start with null (batch)")
        if any(not (d is None or (type(d) is int and d >= 1)) for d in shape[1:]):
            raise ProgramError(f"{where} {name!r}: shape {shape} has a bad dimension")
        axis = spec.get("batch_axis", 0)
        if type(axis) is not int or not 0 <= axis < len(shape):
            raise ProgramError(f"{where} {name!r}: batch_axis {axis!r} is not an axis of "
                               f"its {len(shape)}-d arrays")
        if spec.get("dtype", "float32") != "float32":
            raise ProgramError(f"{where} {name!r}: dtype {spec['dtype']!r}, only float32")


def _check_constants(manifest: dict, arrays: dict[str, np.ndarray]) -> None:
    consts = manifest.get("constants", {})
    if not isinstance(consts, dict):
        raise ProgramError("manifest: field 'constants' must be an object")
    for name, arr_name in consts.items():
        if arr_name not in arrays:
            raise ProgramError(f"constant {name!r}: array {arr_name!r} does not exist")
        if arrays[arr_name].dtype != np.float32:
            raise ProgramError(f"constant {name!r}: dtype {arrays[arr_name].dtype}, "
                               "constants must be float32")
        if not np.isfinite(arrays[arr_name]).all():
            raise ProgramError(f"constant {name!r}: array {arr_name!r} holds NaN or "
                               "infinite values")


# ---------------------------------------------------------------- layers
def _check_layer(i: int, layer: dict, arrays: dict[str, np.ndarray]) -> None:
    where = f"layer {i}"
    if not isinstance(layer, dict):
        raise ProgramError(f"{where}: not an object")
    for key in LAYER_INTS:
        _need(layer, key, int, where)
    if layer["id"] != i:
        raise ProgramError(f"{where}: id {layer['id']} must equal its index {i}")
    where = f"layer {i} ({layer.get('name', '?')})"
    if layer.get("kind") not in LAYER_KINDS:
        raise ProgramError(f"{where}: kind {layer.get('kind')!r} not in {LAYER_KINDS}")
    p = XbarParams.from_sections(layer, where, ProgramError)
    _check_layer_geometry(layer, p, where)
    _check_layer_adc(layer, p, where)
    _check_layer_arrays(layer, p, arrays, where)
    _check_layer_crossbars(layer, where)


def _check_range(where: str, key: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise ProgramError(f"{where}: {key} = {value} out of range {lo}..{hi}")


def _check_layer_geometry(L: dict, p: XbarParams, where: str) -> None:
    for key, lo, hi in (("K", 1, 2**24), ("N", 1, 2**24), ("replicas", 1, 2**20)):
        _check_range(where, key, L[key], lo, hi)
    g = p.geometry(L["K"], L["N"])
    for key, want in (("row_tiles", g.row_tiles), ("col_tiles", g.col_tiles)):
        if L[key] != want:
            raise ProgramError(f"{where}: {key} = {L[key]} inconsistent with its geometry "
                               f"(expected {want})")
    s_x = _need(L, "in_scale", (int, float), where)
    if not (math.isfinite(s_x) and s_x > 0):
        raise ProgramError(f"{where}: in_scale = {s_x!r} must be finite and > 0")


def _check_layer_adc(L: dict, p: XbarParams, where: str) -> None:
    steps = _need(L, "adc_step", list, where)
    if len(steps) != L["row_tiles"]:
        raise ProgramError(f"{where}: adc_step has {len(steps)} entries, expected one per "
                           f"row tile ({L['row_tiles']})")
    full = p.full_step
    for r, row in enumerate(steps):
        if p.per_slice and not (isinstance(row, list) and len(row) == p.slices):
            raise ProgramError(f"{where}: adc_step[{r}] must list one step per weight slice "
                               f"({p.slices})")
        for s, st in enumerate(row if p.per_slice else [row]):
            at = f"adc_step[{r}]" + (f"[{s}]" if p.per_slice else "")
            if not valid_step(st, p.adc.step_rule):
                raise ProgramError(f"{where}: {at} = {st!r} must be "
                                   + ("a power of two >= 1" if p.adc.step_rule == StepRule.POW2
                                      else f"a multiple of 1/{STEP_DENOM} >= 1"))
            if p.adc.range == AdcRange.FULL and st != full:
                raise ProgramError(f"{where}: {at} = {st} but a full-range "
                                   f"{p.adc.bits}-bit ADC needs step {full}")
            if st > full:
                raise ProgramError(f"{where}: {at} = {st} exceeds the full-range step {full}")


def _layer_array(L: dict, arrays: dict, key: str, dtype: str, shape: tuple,
                 where: str) -> np.ndarray:
    names = L["arrays"]
    name = names.get(key)
    if not isinstance(name, str) or name not in arrays:
        raise ProgramError(f"{where}: array {key!r} ({name!r}) does not exist")
    arr = arrays[name]
    if str(arr.dtype) != dtype or arr.shape != shape:
        raise ProgramError(f"{where}: {key} is {arr.dtype}{list(arr.shape)}, expected "
                           f"{dtype}{list(shape)}")
    return arr


def _check_layer_arrays(L: dict, p: XbarParams, arrays: dict, where: str) -> None:
    _need(L, "arrays", dict, where)
    N, S, sg = L["N"], p.slices, p.signs
    J = N * S * sg
    cell_bits = p.crossbar.cell_bits
    codes = _layer_array(L, arrays, "codes", "uint8",
                         (L["row_tiles"], L["col_tiles"], p.crossbar.rows, p.crossbar.cols),
                         where)
    top = max_code(cell_bits)
    if codes.size and int(codes.max()) > top:
        raise ProgramError(f"{where}: conductance code {int(codes.max())} exceeds the "
                           f"largest level {top} of a {cell_bits}-bit cell")
    w_scale = _layer_array(L, arrays, "w_scale", "float32", (N,), where)
    if not np.all(np.isfinite(w_scale) & (w_scale > 0)):
        raise ProgramError(f"{where}: w_scale must be finite and > 0")
    if L["arrays"].get("bias") is not None:
        bias = _layer_array(L, arrays, "bias", "float32", (N,), where)
        if not np.all(np.isfinite(bias)):
            raise ProgramError(f"{where}: bias has non-finite values")
    colsum = _layer_array(L, arrays, "colsum", "int64", (N,), where)
    col_out = _layer_array(L, arrays, "col_out", "int32", (J,), where)
    col_slice = _layer_array(L, arrays, "col_slice", "int32", (J,), where)
    col_sign = _layer_array(L, arrays, "col_sign", "int32", (J,), where)
    _check_colmap(col_out, col_slice, col_sign, N, S, sg, where)
    _check_codes_content(L, p, codes, colsum, col_out, col_slice, col_sign, where)


def _check_colmap(out: np.ndarray, sl: np.ndarray, sg: np.ndarray, N: int, S: int,
                  signs: int, where: str) -> None:
    for name, arr, hi in (("col_out", out, N), ("col_slice", sl, S), ("col_sign", sg, signs)):
        if arr.size and (arr.min() < 0 or arr.max() >= hi):
            raise ProgramError(f"{where}: {name} value out of range 0..{hi - 1}")
    key = (out.astype(np.int64) * signs + sg) * S + sl
    if np.unique(key).size != key.size:
        raise ProgramError(f"{where}: column map holds a (output, sign, slice) twice; every "
                           f"one of the {N * S * signs} must appear exactly once")


def _check_codes_content(L: dict, p: XbarParams, codes: np.ndarray, colsum: np.ndarray,
                         col_out: np.ndarray,
                         col_slice: np.ndarray, col_sign: np.ndarray, where: str) -> None:
    rt, ct, rows, cols = codes.shape
    K, J = L["K"], col_out.size
    flat = codes.transpose(0, 2, 1, 3).reshape(rt * rows, ct * cols)
    if flat[K:].any() or flat[:, J:].any():
        raise ProgramError(f"{where}: unused rows (>= {K}) or columns (>= {J}) hold "
                           "non-zero codes")
    q = decode_weights(flat[:K, :J], col_out, col_slice, col_sign, L["N"],
                       p.crossbar.cell_bits, p.quant.weight_bits, p.quant.mapping)
    if q.size and np.abs(q).max() > p.qw:
        raise ProgramError(f"{where}: a weight decodes to {int(np.abs(q).max())}, beyond "
                           f"Qw = {p.qw} of {p.quant.weight_bits}-bit weights")
    bad = np.flatnonzero(q.sum(axis=0) != colsum)
    if bad.size:
        n = int(bad[0])
        raise ProgramError(f"{where}: colsum[{n}] = {int(colsum[n])} but the codes sum to "
                           f"{int(q[:, n].sum())}")


def _check_layer_crossbars(L: dict, where: str) -> None:
    xbars = _need(L, "crossbars", list, where)
    per = L["row_tiles"] * L["col_tiles"]
    if len(xbars) != L["replicas"]:
        raise ProgramError(f"{where}: {len(xbars)} crossbar lists for {L['replicas']} "
                           "replicas")
    for rep, ids in enumerate(xbars):
        if not isinstance(ids, list) or len(ids) != per or \
                any(type(x) is not int or x < 0 for x in ids):
            raise ProgramError(f"{where}: replica {rep} needs {per} crossbar ids (ints >= 0), "
                               f"got {ids!r}")


# ---------------------------------------------------------------- instructions
def _check_instructions(manifest: dict) -> None:
    names = {s["name"] for s in manifest["inputs"]}
    ctx = {"inputs": names, "consts": set(manifest.get("constants", {})),
           "layers": len(manifest["layers"]), "outputs": set()}
    _check_block(manifest["instructions"], set(), ctx, "")
    missing = {s["name"] for s in manifest["outputs"]} - ctx["outputs"]
    if missing:
        raise ProgramError(f"outputs {sorted(missing)} are never written by an output "
                           "instruction")


def _check_block(block: list, defined: set[str], ctx: dict, prefix: str) -> None:
    for i, ins in enumerate(block):
        where = f"instruction {prefix}{i}"
        if not isinstance(ins, dict):
            raise ProgramError(f"{where}: not an object")
        op = ins.get("op")
        if not isinstance(op, str) or op not in OPS:
            raise ProgramError(f"{where}: unknown opcode {op!r}")
        where = f"{where} ({op})"
        if op == "loop":
            _check_loop(ins, defined, ctx, f"{prefix}{i}.", where)
            continue
        _check_plain(ins, op, defined, ctx, where)


def _check_plain(ins: dict, op: str, defined: set[str], ctx: dict, where: str) -> None:
    spec = OPS[op]
    ins_regs = ins.get("in", [])
    if not isinstance(ins_regs, list) or any(not isinstance(r, str) for r in ins_regs):
        raise ProgramError(f"{where}: 'in' must be a list of register names")
    n = len(ins_regs)
    if (spec.n_in is None and n < 1) or (spec.n_in is not None and n != spec.n_in):
        raise ProgramError(f"{where}: takes {spec.n_in or 'one or more'} inputs, got {n}")
    for reg in ins_regs:
        if reg not in defined:
            raise ProgramError(f"{where}: reads register {reg!r} before it is written")
    for key, typ in spec.attrs.items():
        value = _need(ins, key, typ, where)
        if isinstance(value, float) and not math.isfinite(value):
            raise ProgramError(f"{where}: {key} = {value!r} must be finite")
    _check_attr_values(ins, op, ctx, where)
    if spec.has_out:
        defined.add(_need(ins, "out", str, where))


def _check_attr_values(ins: dict, op: str, ctx: dict, where: str) -> None:
    if op == "input" and ins["name"] not in ctx["inputs"]:
        raise ProgramError(f"{where}: no program input named {ins['name']!r}")
    if op == "const" and ins["name"] not in ctx["consts"]:
        raise ProgramError(f"{where}: no constant named {ins['name']!r}")
    if op == "output":
        ctx["outputs"].add(ins["name"])
    if op == "mvm" and not 0 <= ins["layer"] < ctx["layers"]:
        raise ProgramError(f"{where}: layer {ins['layer']} out of range, program has "
                           f"{ctx['layers']} layers")
    if op in ("reshape", "zeros") and any(type(d) is not int for d in ins["shape"]):
        raise ProgramError(f"{where}: shape {ins['shape']!r} must be a list of ints")
    if op == "transpose":
        perm = ins["perm"]
        if any(type(d) is not int for d in perm) or \
                sorted(perm) != list(range(len(perm))) or perm[:1] != [0]:
            raise ProgramError(f"{where}: perm {perm!r} must be a permutation keeping axis 0 "
                               "(batch) first")
    if op == "im2col":
        lists = [ins[a] for a in ("kernel", "stride", "pads", "dilation")]
        low = (1, 1, 0, 1)
        if len(lists[0]) not in (1, 2) or any(len(v) != len(lists[0]) for v in lists) or \
                any(type(d) is not int or d < lo for v, lo in zip(lists, low) for d in v):
            raise ProgramError(f"{where}: kernel, stride, pads and dilation must be lists of "
                               "1 or 2 ints each (kernel, stride, dilation >= 1, pads >= 0)")
    if op in ("concat", "slice") and ins["axis"] == 0:
        raise ProgramError(f"{where}: axis 0 is the batch axis")
    if op in _VALUE_CHECKS:
        _VALUE_CHECKS[op](ins, where)


def _ints_at_least(ins: dict, key: str, low: int, n: int | None, where: str) -> list[int]:
    v = ins[key]
    if any(type(d) is not int or d < low for d in v) or (n is not None and len(v) != n):
        want = f"{n} " if n is not None else ""
        raise ProgramError(f"{where}: {key} {v!r} must be a list of {want}ints >= {low}")
    return v


def _check_pool(ins: dict, where: str) -> None:
    if ins["mode"] not in POOL_MODES:
        raise ProgramError(f"{where}: mode {ins['mode']!r} is not one of {list(POOL_MODES)}")
    n = len(ins["kernel"])
    if n not in POOL_DIMS:
        raise ProgramError(f"{where}: pools over {n} axes, {list(POOL_DIMS)} are allowed")
    kernel = _ints_at_least(ins, "kernel", 1, n, where)
    _ints_at_least(ins, "stride", 1, n, where)
    dil = _ints_at_least(ins, "dilation", 1, n, where)
    pads = _ints_at_least(ins, "pads", 0, 2 * n, where)
    for i in range(n):  # a window of padding only would have no value (ONNX: pad < kernel)
        if max(pads[i], pads[n + i]) >= dil[i] * (kernel[i] - 1) + 1:
            raise ProgramError(f"{where}: pads {pads} not below the window {kernel}")


def _check_reduce(ins: dict, where: str) -> None:
    if ins["mode"] not in REDUCE_MODES:
        raise ProgramError(f"{where}: mode {ins['mode']!r} is not one of "
                           f"{list(REDUCE_MODES)}")
    axes = ins["axes"]
    if not axes or any(type(a) is not int or a == 0 for a in axes) or \
            len(set(axes)) != len(axes):
        raise ProgramError(f"{where}: axes {axes!r} must be distinct ints, never 0 (batch)")


def _check_pad(ins: dict, where: str) -> None:
    pads = _ints_at_least(ins, "pads", 0, None, where)
    n = len(pads) // 2
    if len(pads) % 2 or n < 1 or pads[0] or pads[n]:
        raise ProgramError(f"{where}: pads {pads!r} must be 2 per axis, 0 on the batch axis")


def _check_clip(ins: dict, where: str) -> None:
    if ins["min"] > ins["max"]:
        raise ProgramError(f"{where}: min {ins['min']} above max {ins['max']}")


_VALUE_CHECKS = {"pool": _check_pool, "reduce": _check_reduce, "pad": _check_pad,
                 "clip": _check_clip}
"""Attribute value checks of the digital ops for users' models (runtime/isa.py)."""


def _check_loop(ins: dict, defined: set[str], ctx: dict, prefix: str, where: str) -> None:
    for key, typ in OPS["loop"].attrs.items():
        _need(ins, key, typ, where)
    count = ins["count"]
    _need(count, "axis", int, f"{where} count")
    if _need(count, "reg", str, f"{where} count") not in defined:
        raise ProgramError(f"{where}: trip count register {count['reg']!r} is not written "
                           "before the loop")
    for reg in ins["carry"]:
        if not isinstance(reg, str) or reg not in defined:
            raise ProgramError(f"{where}: carry register {reg!r} is not written before the "
                               "loop")
    body_defined = set(defined)
    for j, g in enumerate(ins["gather"]):
        _check_move(g, f"{where} gather[{j}]")
        if g["src"] not in defined:
            raise ProgramError(f"{where} gather[{j}]: source {g['src']!r} is not written "
                               "before the loop")
        body_defined.add(g["dst"])
    _check_block(ins["body"], body_defined, ctx, prefix)
    for j, s in enumerate(ins["scatter"]):
        _check_move(s, f"{where} scatter[{j}]")
        if s["src"] not in body_defined:
            raise ProgramError(f"{where} scatter[{j}]: source {s['src']!r} is not written in "
                               "the loop body")
        defined.add(s["dst"])
    # Carry registers stay live after the loop; other body registers are step-local.


def _check_move(m: Any, where: str) -> None:
    for key, typ in (("src", str), ("dst", str), ("axis", int), ("reverse", bool)):
        if key == "reverse" and isinstance(m, dict) and "reverse" not in m:
            continue
        _need(m, key, typ, where)
    if m["axis"] == 0:
        raise ProgramError(f"{where}: axis 0 is the batch axis")
