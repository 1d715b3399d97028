"""farc.runtime.numerics, the one crossbar-numerics module: closed forms against values
worked out by hand from docs/numerics.md, packing against an element-by-element reference,
and a source scan that fails when a closed form is written a second time elsewhere."""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import numpy as np
import pytest
from farc.runtime import numerics as nm
from farc.runtime.builder import column_map, encode_columns, tile_codes
from xbar_flat import xp

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("args", "want"), [
    ((8, 2, "differential"), 4),   # 7 magnitude bits in 2-bit cells
    ((8, 2, "offset"), 4),         # q + Qw needs all 8 bits
    ((16, 2, "offset"), 8),        # isaac / puma
    ((8, 1, "differential"), 7),   # neurosim_rram
    ((9, 2, "offset"), 5),
])
def test_weight_slices(args, want):
    assert nm.weight_slices(*args) == want


def test_bit_width_closed_forms():
    assert (nm.qmax(8), nm.qmax(16), nm.in_zero(8), nm.max_code(2)) == (127, 32767, 128, 3)
    assert (nm.mapping_signs("differential"), nm.mapping_signs("offset")) == (2, 1)
    assert (nm.input_cycles(16, 1), nm.input_cycles(8, 3)) == (16, 3)


def test_full_scale_and_adc_step():
    assert nm.full_scale_pmax(128, 1, 2) == 384          # 128 rows * 1 * 3
    assert nm.full_scale_pmax(128, 1, 2, flip=True) == 192
    assert nm.full_scale_pmax(128, 2, 2) == 1152          # 3 * 384
    assert nm.full_scale_pmax(5, 1, 2, flip=True) == 7    # 15 // 2
    assert [nm.adc_step_for(p, 8) for p in (0, 255, 256, 384, 1152)] == [1, 1, 2, 2, 8]


def test_input_scale_is_float32_and_safe_at_zero():
    assert nm.input_scale(1.27, 8) == float(np.float32(1.27 / 127))
    assert nm.input_scale(0.0, 8) == float(np.float32(1 / 127))


def test_quantize_input_rounds_half_to_even_and_clips():
    x = np.array([0.5, 1.5, -2.5, 1000.0, -1000.0], np.float32)
    np.testing.assert_array_equal(nm.quantize_input(x, 1.0, 8), [0, 2, -2, 127, -127])
    assert nm.quantize_input(x, 1.0, 8, np.float32).dtype == np.float32


def test_quantize_weights_per_column():
    w = np.array([[0.5, -2.0], [-1.0, 1.0]])
    q, s = nm.quantize_weights(w, 8)
    np.testing.assert_array_equal(q, [[64, -127], [-127, 64]])
    np.testing.assert_allclose(s, [1 / 127, 2 / 127], rtol=1e-7)


def _reference_levels(q: np.ndarray, p: nm.XbarParams) -> np.ndarray:
    """docs/tile-program.md's column order, one element at a time."""
    K, N = q.shape
    out = np.zeros((K, N * p.signs * p.slices), np.uint8)
    for k in range(K):
        for n in range(N):
            mags = [max(q[k, n], 0), max(-q[k, n], 0)] if p.quant.mapping == "differential" \
                else [q[k, n] + 2 ** (p.quant.weight_bits - 1) - 1]
            for sign, m in enumerate(mags):
                for s in range(p.slices):
                    out[k, (n * p.signs + sign) * p.slices + s] = (m >> (2 * s)) & 3
    return out


@pytest.mark.parametrize("mapping", ["differential", "offset"])
def test_encode_and_decode_columns(mapping):
    p = xp(weight_bits=7, cell_bits=2, mapping=mapping)
    q = np.random.default_rng(0).integers(-p.qw, p.qw + 1, size=(9, 5))
    levels = encode_columns(q, p)
    np.testing.assert_array_equal(levels, _reference_levels(q, p))
    cm = column_map(5, p)
    np.testing.assert_array_equal(
        nm.decode_weights(levels, cm["col_out"], cm["col_slice"], cm["col_sign"], 5,
                          p.crossbar.cell_bits, p.quant.weight_bits, p.quant.mapping), q)


def test_geometry_of_a_layer():
    p = xp(rows=128, cols=128, weight_bits=8, cell_bits=2, mapping="differential")
    g = p.geometry(300, 10)
    assert (g.phys_cols, g.row_tiles, g.col_tiles, g.crossbars) == (80, 3, 1, 3)
    assert (g.rows_in_use, g.cols_in_use, g.used_cols) == ([128, 128, 44], [80], 80)
    assert g.cells == 300 * 80 and g.utilization == pytest.approx(300 * 80 / (3 * 128 * 128))
    codes = tile_codes(encode_columns(np.ones((300, 10), np.int64), p), p)
    assert codes.shape == (g.row_tiles, g.col_tiles, 128, 128)


def test_target_produces_its_parameters_once():
    from farc.targets import load_target

    t = load_target("isaac")
    assert t.xbar is t.xbar
    # 16-bit sign-magnitude inputs: 2 phases x 15 magnitude bits; flip halves 128 x 3
    assert (t.xbar.slices, t.xbar.signs, t.xbar.cycles, t.xbar.pmax) == (8, 1, 30, 192)
    assert t.xbar.full_range_lossless and t.xbar.full_step == 1
    assert (t.xbar.crossbar, t.xbar.adc) == (t.crossbar, t.adc)  # the same sections
    assert nm.XbarParams.from_sections(t.to_dict(), "t") == t.xbar  # a program's manifest


def test_lossless_rule_and_flip_encoding():
    codes = np.full((1, 4, 2), 3, np.uint8)  # 4 rows of level 3: each column sums to 12
    assert nm.lossless([1], codes, dac_bits=1, adc_bits=4)        # 12 <= 15
    assert not nm.lossless([1], codes, dac_bits=1, adc_bits=3)    # 12 > 7
    assert not nm.lossless([2], codes, dac_bits=1, adc_bits=4)    # a step > 1 rounds
    mask = nm.flip_mask(codes, np.array([4]), cell_bits=2)
    assert mask.tolist() == [[True, True]]                         # 12 > 4 * 3 // 2
    stored = nm.physical_codes(codes, mask, np.array([4]), cell_bits=2)
    assert stored.sum() == 0 and nm.lossless([1], stored, dac_bits=1, adc_bits=3)


# ---------------------------------------------------------------- one formula, one place
CLOSED_FORMS = re.compile(
    r"2\s*\*\*\s*\(?\s*(?:int\()?[\w.\[\]\"']*(?:input_bits|weight_bits|cell_bits|dac_bits"
    r"|adc_bits)"                       # Qx, Qw, z, 2**bits - 1
    r"|ceil\([^)]*/\s*[\w.\[\]\"']*(?:rows|cols|dac_bits|dac\.bits|cell_bits)\b")  # tiles, cycles
# The verification reference restates the spec on purpose (docs/verify.md): a bug in
# farc.runtime.numerics must not be able to hide from it.
INDEPENDENT = {"runtime/numerics.py", "farc/check/qdq.py", "farc/check/reference.py",
               "farc/check/calibration.py"}


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, code) without comments and docstrings (a string that starts a
    statement); strings inside expressions, such as dict keys, are kept."""
    keep: dict[int, list[str]] = {}
    starts = (tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT)
    prev = tokenize.NEWLINE
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        docstring = tok.type == tokenize.STRING and prev in starts
        if tok.type != tokenize.COMMENT and not docstring:
            keep.setdefault(tok.start[0], []).append(tok.string)
        if tok.type not in (tokenize.COMMENT, tokenize.NL):
            prev = tok.type
    return [(n, " ".join(parts)) for n, parts in keep.items()]


def find_restated_closed_forms(root: Path) -> list[str]:
    hits = []
    for folder in ("farc", "passes", "targets", "runtime", "bench"):
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel in INDEPENDENT:
                continue
            hits += [f"{rel}:{n}: {line}" for n, line in _code_lines(path)
                     if CLOSED_FORMS.search(line.replace(" ", ""))]
    return hits


def test_no_closed_form_is_written_twice():
    assert find_restated_closed_forms(ROOT) == []


def test_the_scan_finds_a_restated_formula(tmp_path):
    (tmp_path / "runtime").mkdir()
    (tmp_path / "runtime" / "x.py").write_text(
        '"""qx = 2 ** (input_bits - 1) - 1 in a docstring is fine"""\n'
        "qx = 2 ** (layer['input_bits'] - 1) - 1\n"
        "tiles = math.ceil(K / p.crossbar.rows)\n")
    assert [h.split(":")[1] for h in find_restated_closed_forms(tmp_path)] == ["2", "3"]


# ---------------------------------------------------------------- stated once, checked
def _isaac_program():
    from farc.runtime.builder import make_program, pack_layer
    from farc.targets import load_target

    t = load_target("isaac")
    w = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    layer = pack_layer(w, None, 0.01, t.xbar)
    ins = [dict(op="input", name="x", out="x"), dict(op="mvm", layer=0, **{"in": ["x"]},
                                                     out="y"),
           dict(op="output", name="y", **{"in": ["y"]})]
    return make_program(ins, {"x": [16]}, {"y": [4]}, [layer], target=t.to_dict())


def test_a_layer_may_choose_its_precision_but_not_another_array():
    from farc.runtime.program import Program

    from farc.errors import ProgramError

    prog = _isaac_program()  # validates: layers and target agree
    target = prog.manifest["target"]
    manifest = {**prog.manifest, "target": {**target, "adc": {**target["adc"], "bits": 6}}}
    Program(manifest, prog.arrays).validate()  # per-layer ADC width: a valid program
    manifest = {**prog.manifest,
                "target": {**target, "crossbar": {**target["crossbar"], "rows": 256}}}
    with pytest.raises(ProgramError, match=r"layer 0 \(layer0\): crossbar .* but the "
                       r"program's chip has .*'rows': 256"):
        Program(manifest, prog.arrays).validate()


@pytest.mark.parametrize(("key", "value", "rule"), [
    ("crossbar.rows", 100, "must be a power of two in 8..4096"),
    ("crossbar.cols", 4, "must be a power of two in 8..4096"),
    ("adc.bits", 17, "must be in 1..16"), ("quant.weight_bits", 1, "must be in 2..16"),
    ("adc.granularity", "column", "must be one of 'tile', 'slice'")])
def test_targets_and_programs_share_parameter_limits(key, value, rule):
    """One constructor (schema.parse_section) checks a target file and a program layer: the
    same limit gives the same words in both."""
    from farc.runtime.program import Program
    from farc.targets import load_target

    from farc.errors import ConfigError, ProgramError

    section, field = key.split(".")
    said = rf"\[{section}\] {field} = {value!r} {rule}"
    with pytest.raises(ConfigError, match=said):
        load_target("isaac").with_overrides(**{key: value})
    prog = _isaac_program()
    layer = {**prog.manifest["layers"][0]}
    layer[section] = {**layer[section], field: value}
    with pytest.raises(ProgramError, match=said):
        Program({**prog.manifest, "layers": [layer], "target": {}}, prog.arrays).validate()
