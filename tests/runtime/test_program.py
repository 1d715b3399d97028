"""The .farc container: round trip and every way a file can be bad (one ProgramError line)."""

from __future__ import annotations

import copy
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from _rt_util import linear_program
from farc.runtime.emulator import Emulator
from farc.runtime.program import Program
from xbar_flat import xp

from farc.errors import ProgramError


@pytest.fixture
def program() -> Program:
    rng = np.random.default_rng(0)
    W = rng.normal(size=(20, 6)).astype(np.float32)
    x = rng.normal(size=(4, 20)).astype(np.float32)
    return linear_program(W, rng.normal(size=6).astype(np.float32), x,
                          xp(rows=8, cols=16))


def _rewrite(src: Path, dst: Path, edit) -> None:
    """Copy a program zip, letting edit(name, bytes) -> bytes | None change members."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = edit(info.filename, zin.read(info))
            if data is not None:
                zout.writestr(info.filename, data)


def _edit_manifest(src: Path, dst: Path, fn) -> None:
    def edit(name: str, data: bytes) -> bytes:
        if name != "manifest.json":
            return data
        m = json.loads(data)
        fn(m)
        return json.dumps(m).encode()
    _rewrite(src, dst, edit)


def test_round_trip(program: Program, tmp_path: Path) -> None:
    path = program.save(tmp_path / "m.farc")
    back = Program.load(path)
    assert back.manifest == program.manifest
    assert back.arrays.keys() == program.arrays.keys()
    for k, v in program.arrays.items():
        np.testing.assert_array_equal(back.arrays[k], v)
        assert back.arrays[k].dtype == v.dtype
    x = np.random.default_rng(1).normal(size=(3, 20)).astype(np.float32)
    np.testing.assert_array_equal(Emulator(back).run({"x": x})["y"],
                                  Emulator(program).run({"x": x})["y"])
    assert [p.name for p in tmp_path.iterdir()] == ["m.farc"]  # no temp file left


def test_stored_not_compressed(program: Program, tmp_path: Path) -> None:
    with zipfile.ZipFile(program.save(tmp_path / "m.farc")) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}


def test_wrong_version(program: Program, tmp_path: Path) -> None:
    src = program.save(tmp_path / "a.farc")
    _edit_manifest(src, tmp_path / "b.farc", lambda m: m.update(version=1))
    with pytest.raises(ProgramError, match=r"unsupported program version 1; this farc reads "
                       r"version 2 \(recompile"):
        Program.load(tmp_path / "b.farc")


def test_wrong_format_string(program: Program, tmp_path: Path) -> None:
    src = program.save(tmp_path / "a.farc")
    _edit_manifest(src, tmp_path / "b.farc", lambda m: m.update(format="onnx"))
    with pytest.raises(ProgramError, match="not a farc tile program: format 'onnx'"):
        Program.load(tmp_path / "b.farc")


def test_not_a_zip(tmp_path: Path) -> None:
    bad = tmp_path / "x.farc"
    bad.write_bytes(b"hello, not a zip at all")
    with pytest.raises(ProgramError, match="corrupt or truncated"):
        Program.load(bad)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ProgramError, match="no such program file"):
        Program.load(tmp_path / "nope.farc")


@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999])
def test_truncated(program: Program, tmp_path: Path, keep: float) -> None:
    data = program.save(tmp_path / "a.farc").read_bytes()
    (tmp_path / "b.farc").write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ProgramError, match="corrupt or truncated"):
        Program.load(tmp_path / "b.farc")


def test_tampered_array(program: Program, tmp_path: Path) -> None:
    src = program.save(tmp_path / "a.farc")

    def edit(name: str, data: bytes) -> bytes:
        if name.endswith("w_scale.npy"):
            return data[:-1] + bytes([data[-1] ^ 1])
        return data
    _rewrite(src, tmp_path / "b.farc", edit)
    with pytest.raises(ProgramError, match=r"'layer0.w_scale' fails its sha256 check"):
        Program.load(tmp_path / "b.farc")


def test_missing_array(program: Program, tmp_path: Path) -> None:
    src = program.save(tmp_path / "a.farc")
    _rewrite(src, tmp_path / "b.farc",
             lambda n, d: None if n.endswith("colsum.npy") else d)
    with pytest.raises(ProgramError, match=r"'layer0\.colsum' is listed but missing"):
        Program.load(tmp_path / "b.farc")


def test_extra_member(program: Program, tmp_path: Path) -> None:
    src = program.save(tmp_path / "a.farc")
    with zipfile.ZipFile(src, "a") as zf:
        zf.writestr("arrays/evil.npy", b"x")
    with pytest.raises(ProgramError, match=r"unexpected member 'arrays/evil\.npy'"):
        Program.load(src)


def test_pickled_array_refused(program: Program, tmp_path: Path) -> None:
    """An object array (it would need pickle) is refused before numpy reads it."""
    import hashlib
    import io

    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    blob = buf.getvalue()
    src = program.save(tmp_path / "a.farc")
    entry = {"dtype": "object", "shape": [1], "sha256": hashlib.sha256(blob).hexdigest()}
    _edit_manifest(src, tmp_path / "b.farc", lambda m: m["arrays"].update(evil=entry))
    with zipfile.ZipFile(tmp_path / "b.farc", "a") as zf:
        zf.writestr("arrays/evil.npy", blob)
    with pytest.raises(ProgramError, match="array 'evil': dtype 'object' not allowed"):
        Program.load(tmp_path / "b.farc")


def test_inconsistent_shapes(program: Program) -> None:
    m = copy.deepcopy(program.manifest)
    m["layers"][0]["K"] = 30
    with pytest.raises(ProgramError, match=r"layer 0 \(layer0\): codes is uint8\[3, 1, 8, 16\]"
                                           r"|row_tiles = 3 inconsistent .*expected 4"):
        Program(m, program.arrays).validate()
    m = copy.deepcopy(program.manifest)
    m["layers"][0]["col_tiles"] = 2
    with pytest.raises(ProgramError, match=r"col_tiles = 2 inconsistent .*expected 3"):
        Program(m, program.arrays).validate()


def test_array_resized_against_table(program: Program) -> None:
    arrays = dict(program.arrays)
    arrays["layer0.bias"] = np.zeros(7, np.float32)
    with pytest.raises(ProgramError, match=r"'layer0.bias': shape \[7\] but manifest says \[6\]"):
        Program(program.manifest, arrays).validate()


def test_code_beyond_cell_levels(program: Program) -> None:
    arrays = dict(program.arrays)
    codes = arrays["layer0.codes"].copy()
    codes[0, 0, 0, 0] = 9
    arrays["layer0.codes"] = codes
    m = copy.deepcopy(program.manifest)
    del m["arrays"]
    with pytest.raises(ProgramError, match="code 9 exceeds the largest level 3"):
        Program(m, arrays).validate()


def test_colsum_mismatch(program: Program) -> None:
    arrays = dict(program.arrays)
    arrays["layer0.colsum"] = arrays["layer0.colsum"] + 1
    m = copy.deepcopy(program.manifest)
    del m["arrays"]
    with pytest.raises(ProgramError, match=r"colsum\[0\] = .* but the codes sum to"):
        Program(m, arrays).validate()


def test_full_range_adc_step_checked(program: Program) -> None:
    m = copy.deepcopy(program.manifest)
    m["layers"][0]["adc_step"] = [2, 2, 2]
    with pytest.raises(ProgramError, match=r"adc_step\[0\] = 2 but a full-range 8-bit ADC "
                                           r"needs step 1"):
        Program(m, program.arrays).validate()


def test_unknown_opcode(program: Program) -> None:
    m = copy.deepcopy(program.manifest)
    m["instructions"][1]["op"] = "fft"
    with pytest.raises(ProgramError, match=r"instruction 1: unknown opcode 'fft'"):
        Program(m, program.arrays).validate()


def test_missing_attribute(program: Program) -> None:
    m = copy.deepcopy(program.manifest)
    del m["instructions"][1]["layer"]
    with pytest.raises(ProgramError, match=r"instruction 1 \(mvm\): missing field 'layer'"):
        Program(m, program.arrays).validate()


def test_layer_out_of_range(program: Program) -> None:
    m = copy.deepcopy(program.manifest)
    m["instructions"][1]["layer"] = 3
    with pytest.raises(ProgramError, match=r"instruction 1 \(mvm\): layer 3 out of range, "
                                           r"program has 1 layers"):
        Program(m, program.arrays).validate()


def test_undefined_register(program: Program) -> None:
    m = copy.deepcopy(program.manifest)
    m["instructions"][1]["in"] = ["ghost"]
    with pytest.raises(ProgramError, match=r"instruction 1 \(mvm\): reads register 'ghost' "
                                           "before it is written"):
        Program(m, program.arrays).validate()


def _loop_manifest(program: Program, body_in: str, after_in: str) -> dict:
    m = copy.deepcopy(program.manifest)
    m["inputs"] = [{"name": "x", "shape": [None, 5, 4], "dtype": "float32"}]
    m["instructions"] = [
        {"op": "input", "name": "x", "out": "x"},
        {"op": "zeros", "in": ["x"], "shape": [4], "out": "s"},
        {"op": "loop", "count": {"reg": "x", "axis": 1}, "carry": ["s"],
         "gather": [{"src": "x", "axis": 1, "dst": "xt", "reverse": False}],
         "body": [{"op": "add", "in": ["s", body_in], "out": "t"},
                  {"op": "scale", "in": ["t"], "value": 1.0, "out": "s"}],
         "scatter": [{"src": "s", "axis": 1, "dst": "ys", "reverse": False}]},
        {"op": "output", "name": "y", "in": [after_in]},
    ]
    return m


def test_loop_registers_ok(program: Program) -> None:
    Program(_loop_manifest(program, "xt", "ys"), program.arrays).validate()
    Program(_loop_manifest(program, "xt", "s"), program.arrays).validate()  # carry is live


def test_loop_undefined_register_in_body(program: Program) -> None:
    with pytest.raises(ProgramError, match=r"instruction 2.0 \(add\): reads register 'ys'"):
        Program(_loop_manifest(program, "ys", "ys"), program.arrays).validate()


def test_loop_body_temporary_not_live_after(program: Program) -> None:
    with pytest.raises(ProgramError, match=r"instruction 3 \(output\): reads register 'xt'"):
        Program(_loop_manifest(program, "xt", "xt"), program.arrays).validate()


def test_output_never_written(program: Program) -> None:
    m = copy.deepcopy(program.manifest)
    m["instructions"] = m["instructions"][:2]
    with pytest.raises(ProgramError, match=r"outputs \['y'\] are never written"):
        Program(m, program.arrays).validate()


def test_bad_input_spec(program: Program) -> None:
    m = copy.deepcopy(program.manifest)
    m["inputs"][0]["shape"] = [3, 20]
    with pytest.raises(ProgramError, match=r"inputs\[0\] 'x': shape \[3, 20\] must start "
                                           "with null"):
        Program(m, program.arrays).validate()


def test_save_is_atomic_on_failure(program: Program, tmp_path: Path) -> None:
    """A program that fails validation is never written, not even partly."""
    m = copy.deepcopy(program.manifest)
    m["instructions"][1]["op"] = "fft"
    with pytest.raises(ProgramError):
        Program(m, program.arrays).save(tmp_path / "m.farc")
    assert list(tmp_path.iterdir()) == []
