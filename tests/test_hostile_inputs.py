"""Hostile and mistaken inputs (issue 18; the table of cases is docs/bad-inputs.md): bombs are
refused from headers and manifests before allocation, with one FarcError line naming the
limit; no command writes over one of its inputs or writes two outputs to one path; temp
files never outlive a write. Bomb files are small on disk: their sizes are declared in
headers, never real gigabytes."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from farc.runtime.builder import make_program, pack_layer, scale_for_inputs
from farc.runtime.emulator import Emulator
from farc.runtime.program import Program
from test_bad_inputs import farc, one_line_error
from test_fuzz_program import write_farc
from xbar_flat import xp

from farc.atomic import atomic_write, check_outputs, file_mode, remove_stale_temps
from farc.errors import ConfigError, DataError, EmulatorError, OutputError, ProgramError

GIB = 2**30


# ----------------------------------------------------------------- a small valid program
def base_program(scale: float = 1.0, extra: list | None = None) -> Program:
    """x[12] -> mvm -> + c -> layernorm(g, b) -> * scale -> y, with constants and an eps."""
    rng = np.random.default_rng(0)
    w, x = rng.normal(size=(12, 4)).astype(np.float32), rng.normal(size=(5, 12))
    layer, arrays = pack_layer(w, None, scale_for_inputs(x, 8), xp(rows=8, cols=16))
    ins = [{"op": "input", "name": "x", "out": "x"},
           {"op": "mvm", "layer": 0, "in": ["x"], "out": "y"},
           {"op": "const", "name": "c", "out": "c"},
           {"op": "const", "name": "g", "out": "g"},
           {"op": "const", "name": "b", "out": "b"},
           {"op": "add", "in": ["y", "c"], "out": "z"},
           {"op": "layernorm", "in": ["z", "g", "b"], "eps": 1e-5, "out": "n"},
           {"op": "scale", "in": ["n"], "value": scale, "out": "s"},
           {"op": "scale", "in": ["s"], "value": scale, "out": "t"},
           *(extra or []),
           {"op": "output", "name": "y", "in": ["t"]}]
    consts = {"c": np.ones(4), "g": np.ones(4), "b": np.zeros(4)}
    return make_program(ins, {"x": [12]}, {"y": [4]}, [(layer, arrays)], constants=consts)


def isaac_program() -> Program:
    """A FAR-like block built for the isaac target (its manifest states the chip)."""
    from farc.targets import load_target
    from handmade_programs import far_program

    return far_program(load_target("isaac"))


def forged(tmp_path: Path, edit, prog: Program | None = None, name: str = "bad.farc") -> Path:
    """The base program with its manifest/arrays edited by edit(manifest, arrays), written
    by hand (a stored zip, the arrays table recomputed), so the edit reaches the loader."""
    prog = prog or base_program()
    manifest, arrays = json.loads(json.dumps(prog.manifest)), dict(prog.arrays)
    edit(manifest, arrays)
    write_farc(tmp_path / name, manifest, arrays, refresh_table=True)
    return tmp_path / name


def inputs(tmp_path: Path) -> Path:
    np.save(tmp_path / "x.npy", np.random.default_rng(1).normal(size=(5, 12)).astype(np.float32))
    return tmp_path / "x.npy"


def test_base_program_runs(tmp_path: Path) -> None:
    """Every refusal below comes from its edit: unedited, the program loads and runs."""
    path = forged(tmp_path, lambda m, a: None)
    x = np.load(inputs(tmp_path))
    assert np.isfinite(Emulator(Program.load(path)).run({"x": x})["y"]).all()


# ----------------------------------------------------------------- program bombs
def _loop_nest(depth: int) -> dict:
    ins: dict = {"op": "loop", "count": {"reg": "x", "axis": 1}, "carry": [], "gather": [],
                 "body": [], "scatter": []}
    for _ in range(depth - 1):
        ins = {**ins, "body": [ins]}
    return ins


def _loop_over_zeros(m: dict, a: dict) -> None:
    m["instructions"][1:1] = [
        {"op": "zeros", "in": ["x"], "shape": [10**9, 0], "out": "e"},
        {**_loop_nest(1), "count": {"reg": "e", "axis": 1}}]


def _declare_huge(m: dict, a: dict) -> None:
    m["arrays"]["layer0.codes"]["shape"] = [2**20, 2**16, 4]  # 256 GiB of uint8


PROGRAM_BOMBS = {
    "declared-256GiB-array": (
        lambda m, a: None, _declare_huge, "over the memory budget of"),
    "zeros-1e12-register": (
        lambda m, a: m["instructions"].insert(1, {"op": "zeros", "in": ["x"],
                                                  "shape": [10**6, 10**6], "out": "big"}),
        None, "register [1, 1000000, 1000000] needs 3.6 TiB, over the memory budget"),
    "loop-over-zeros-1e9-steps": (_loop_over_zeros, None, "would execute 1,000,000,0"),
    "crossbar-id-1e8": (  # on the isaac target (16,128 crossbars)
        lambda m, a: m["layers"][0].update(crossbars=[[10**8] * len(m["layers"][0][
            "crossbars"][0])]),
        None, "crossbar id 100000000 out of range, the target chip has 16,128 crossbars"),
    "chip-of-1e12-crossbars": (
        lambda m, a: m["target"]["chip"].update(tiles=10**6, imas_per_tile=10**3,
                                                crossbars_per_ima=10**3),
        None, "over the limit of 4,194,304"),
    "nan-in-scale": (
        lambda m, a: m["layers"][0].update(in_scale=float("nan")), None,
        "non-finite number NaN"),
    "inf-in-eps": (
        lambda m, a: m["instructions"][6].update(eps=float("inf")), None,
        "non-finite number Infinity"),
    "nan-in-constant": (
        lambda m, a: a.update({"const.c": np.full(4, np.nan, np.float32)}), None,
        "constant 'c': array 'const.c' holds NaN or infinite values"),
    "inf-in-codes-scale": (
        lambda m, a: a.update({"layer0.w_scale": np.full(4, np.inf, np.float32)}), None,
        "w_scale must be finite and > 0"),
}


@pytest.mark.parametrize("case", sorted(PROGRAM_BOMBS))
def test_program_bomb_refused_on_load(tmp_path: Path, case: str) -> None:
    edit, after, match = PROGRAM_BOMBS[case]
    path = forged(tmp_path, edit, isaac_program() if "crossbar" in case else None)
    if after is not None:  # edits the table after it was recomputed: a forged declaration
        manifest = json.loads(zipfile.ZipFile(path).read("manifest.json"))
        after(manifest, {})
        _rewrite_manifest(path, manifest)
    with pytest.raises(ProgramError, match=match.replace("[", r"\[").replace("]", r"\]")):
        Program.load(path)


def _rewrite_manifest(path: Path, manifest: dict) -> None:
    with zipfile.ZipFile(path) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    members["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, blob in members.items():
            zf.writestr(name, blob)


def test_480_nested_loops_are_refused_not_a_recursion_error(tmp_path: Path) -> None:
    """Written as text: json.dumps itself would overflow the stack on it."""
    path = forged(tmp_path, lambda m, a: m["instructions"].insert(1, "NEST"))
    manifest = zipfile.ZipFile(path).read("manifest.json").decode()
    loop = ('{"op": "loop", "count": {"reg": "x", "axis": 1}, "carry": [], "gather": [], '
            '"scatter": [], "body": [')
    members = {i.filename: zipfile.ZipFile(path).read(i) for i in
               zipfile.ZipFile(path).infolist()}
    members["manifest.json"] = manifest.replace('"NEST"', loop * 480 + "]}" * 480).encode()
    with zipfile.ZipFile(path, "w") as zf:
        for k, v in members.items():
            zf.writestr(k, v)
    with pytest.raises(ProgramError, match="nests 962 levels deep, over the limit of 64"):
        Program.load(path)


def test_manifest_nested_200k_deep_is_refused_not_a_recursion_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.farc"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("manifest.json", '{"format": "farc-tile-program", "version": 1, "x": '
                    + "[" * 200_000 + "]" * 200_000 + "}")
    with pytest.raises(ProgramError, match="nests 200001 levels deep, over the limit of 64"):
        Program.load(path)


def test_manifest_over_its_size_limit(tmp_path: Path, monkeypatch) -> None:
    path = forged(tmp_path, lambda m, a: None)
    monkeypatch.setattr("farc.runtime.program.MAX_MANIFEST_BYTES", 1000)
    with pytest.raises(ProgramError, match=r"manifest.json is .*, over the limit of 1000 bytes"):
        Program.load(path)


def test_compressed_member_is_refused_before_inflating(tmp_path: Path) -> None:
    """The format stores members; a deflated one (a zip bomb inflates 1000x) is refused
    from its directory entry, before a byte is inflated."""
    good = forged(tmp_path, lambda m, a: None, name="good.farc")
    path = tmp_path / "bomb.farc"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    with pytest.raises(ProgramError, match=r"member 'manifest\.json' is compressed"):
        Program.load(path)


def test_member_sizes_beyond_the_file_are_refused(tmp_path: Path) -> None:
    path = forged(tmp_path, lambda m, a: None)
    raw = bytearray(path.read_bytes())
    at = raw.find(b"PK\x01\x02", raw.find(b"arrays/layer0.codes.npy") - 64)
    struct.pack_into("<II", raw, at + 20, 2**31, 2**31)  # compressed, uncompressed size
    path.write_bytes(bytes(raw))
    with pytest.raises(ProgramError, match=r"members declare 2\.0 GiB in a file of"):
        Program.load(path)


def test_array_header_must_match_the_manifest_before_allocation(tmp_path: Path) -> None:
    """An array blob whose own .npy header declares 10^15 elements (sha256 recomputed, so
    only the header check stands between it and np.load)."""
    path = forged(tmp_path, lambda m, a: None)
    with zipfile.ZipFile(path) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    blob = members["arrays/layer0.bias.npy"] if "arrays/layer0.bias.npy" in members else \
        members["arrays/const.c.npy"]
    fh = io.BytesIO()
    np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False,
                                              "shape": (10**15,)})
    bomb = fh.getvalue() + blob[len(fh.getvalue()):]
    name = "const.c"
    members[f"arrays/{name}.npy"] = bomb
    manifest = json.loads(members["manifest.json"])
    import hashlib

    manifest["arrays"][name]["sha256"] = hashlib.sha256(bomb).hexdigest()
    members["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(path, "w") as zf:
        for k, v in members.items():
            zf.writestr(k, v)
    with pytest.raises(ProgramError, match=r"array 'const.c': array float32"
                                           r"\[1000000000000000\] needs 3638.0 TiB, over"):
        Program.load(path)


def test_in_memory_program_with_nonfinite_attribute_fails_validation() -> None:
    prog = base_program()
    prog.manifest["instructions"][7]["value"] = float("nan")
    with pytest.raises(ProgramError, match=r"instruction 7 \(scale\): value = nan must be "
                                           "finite"):
        prog.validate()


def test_loop_bound_checked_at_run_time_for_unknown_dims(monkeypatch) -> None:
    """With an input dimension unknown until run time, the step budget is checked by the
    emulator before the first instruction, at the shapes it is given."""
    rng = np.random.default_rng(0)
    layer, arrays = pack_layer(rng.normal(size=(4, 4)).astype(np.float32), None,
                               scale_for_inputs(np.ones(1), 8), xp(rows=8, cols=16))
    prog = make_program([{"op": "input", "name": "x", "out": "x"},
                         {"op": "loop", "count": {"reg": "x", "axis": 1}, "carry": [],
                          "gather": [], "body": [], "scatter": []},
                         {"op": "output", "name": "y", "in": ["x"]}],
                        {"x": [None, 4]}, {"y": [None, 4]}, [(layer, arrays)])
    emu = Emulator(prog)
    monkeypatch.setenv("FARC_MAX_STEPS", "1000")
    emu.run({"x": np.zeros((1, 10, 4), np.float32)})  # 10 steps: fine
    with pytest.raises(EmulatorError, match=r"would execute 5,002 instructions, over the "
                                            r"budget of 1,000 \(raise it with FARC_MAX_STEPS"):
        emu.run({"x": np.zeros((1, 5000, 4), np.float32)})


def test_program_bomb_cli_one_line(tmp_path: Path) -> None:
    path = forged(tmp_path, PROGRAM_BOMBS["loop-over-zeros-1e9-steps"][0])
    one_line_error(farc("run", path, "--input", inputs(tmp_path), "-o", tmp_path / "o.npy"),
                   "over the budget of 50,000,000 (raise it with FARC_MAX_STEPS)")
    assert not (tmp_path / "o.npy").exists()


# ----------------------------------------------------------------- non-finite outputs
def test_nonfinite_outputs_fail_the_run_unless_asked_for(tmp_path: Path) -> None:
    """Finite program, finite input, overflowing result: exit 1 and nothing written (no
    accuracy over NaN logits); --allow-nonfinite writes them."""
    path = base_program(scale=3e38).save(tmp_path / "m.farc")
    x, out = inputs(tmp_path), tmp_path / "o.npy"
    one_line_error(farc("run", path, "--input", x, "-o", out),
                   "output 'y' holds 20 NaN or infinite values of 20; nothing written")
    assert not out.exists()
    res = farc("run", path, "--input", x, "-o", out, "--allow-nonfinite")
    assert res.returncode == 0, res.stderr
    assert not np.isfinite(np.load(out)).any()


# ----------------------------------------------------------------- .npy / .npz inputs
def _npy_header_only(path: Path, shape: tuple, descr: str = "<f4") -> Path:
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": descr, "fortran_order": False,
                                                  "shape": shape})
        fh.write(b"\0" * 64)
    return path


def _npz_bad_crc(path: Path) -> Path:
    np.savez(path, x=np.full((5, 12), 0.25, np.float32))
    raw = bytearray(path.read_bytes())
    at = raw.find(np.float32(0.25).tobytes() * 4)
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))
    return path


def _npz_object(path: Path) -> Path:
    np.savez(path, x=np.array([{"a": 1}, None], dtype=object))
    return path


def _npz_bomb(path: Path) -> Path:
    fh = io.BytesIO()
    np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False,
                                              "shape": (10**12, 12)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x.npy", fh.getvalue() + b"\0" * 64)
    return path


INPUT_BOMBS = {
    "npy-header-1e12-samples": (lambda p: _npy_header_only(p / "x.npy", (10**12, 12)),
                                "array float32[1000000000000, 12] needs 43.7 TiB, over the "
                                "memory budget of 8.0 GiB (raise it with --max-memory"),
    "npy-header-beyond-file": (lambda p: _npy_header_only(p / "x.npy", (1000, 12)),
                               "only 64 bytes follow it (truncated or forged)"),
    "npy-object-dtype": (lambda p: _npy_header_only(p / "x.npy", (5,), "|O"),
                         "holds Python objects"),
    "npz-object-member": (lambda p: _npz_object(p / "x.npz"), "holds Python objects"),
    "npz-bad-crc": (lambda p: _npz_bad_crc(p / "x.npz"), "Bad CRC-32 for file 'x.npy'"),
    "npz-member-1e12-samples": (lambda p: _npz_bomb(p / "x.npz"), "over the memory budget"),
}


@pytest.mark.parametrize("case", sorted(INPUT_BOMBS))
def test_input_array_bombs(tmp_path: Path, case: str) -> None:
    from farc.npyio import load_arrays

    make, match = INPUT_BOMBS[case]
    with pytest.raises(DataError, match=re.escape(match)):
        load_arrays(make(tmp_path))


@pytest.mark.parametrize("flag", ["--input", "--labels"])
def test_input_bomb_cli_one_line(tmp_path: Path, flag: str) -> None:
    prog = base_program().save(tmp_path / "m.farc")
    x = inputs(tmp_path)
    bomb = _npy_header_only(tmp_path / "bomb.npy", (10**12, 12), "<f4" if flag == "--input"
                            else "<i8")
    given = {"--input": bomb, "--labels": x} if flag == "--input" else \
        {"--input": x, "--labels": bomb}
    res = farc("run", prog, *[v for kv in given.items() for v in kv], "-o", tmp_path / "o.npy")
    one_line_error(res, f"{flag} {bomb}: array")
    assert "over the memory budget" in res.stderr


def test_max_memory_option_raises_the_budget(tmp_path: Path) -> None:
    """--max-memory is the documented way up: the same header passes the budget check and
    fails only because its data is not there."""
    prog, x = base_program().save(tmp_path / "m.farc"), inputs(tmp_path)
    bomb = _npy_header_only(tmp_path / "bomb.npy", (10**9, 12))
    one_line_error(farc("run", prog, "--input", bomb, "-o", tmp_path / "o.npy"),
                   "over the memory budget of 8.0 GiB")
    one_line_error(farc("--max-memory", "64G", "run", prog, "--input", bomb, "-o",
                        tmp_path / "o.npy"), "only 64 bytes follow it")
    one_line_error(farc("--max-memory", "lots", "run", prog, "--input", x, "-o",
                        tmp_path / "o.npy"), "--max-memory = 'lots' is not a size")


# ----------------------------------------------------------------- image folders
def _png_header(path: Path, w: int, h: int) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2,
                                                                        0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("w,h,match", [
    (20000, 20000, "image over the limit of 67,108,864 pixels (Image size (400000000 pixels) "
                   "exceeds limit"),  # PIL's own bomb check fires first, in open()
    (9000, 9000, "image of 9000x9000 pixels, over the limit of 67,108,864 pixels")])
def test_image_pixels_checked_before_decoding(tmp_path: Path, w: int, h: int,
                                              match: str) -> None:
    from farc.data import load_split

    for split in ("train", "val"):
        _png_header(tmp_path / split / "a" / "big.png", w, h)
    with pytest.raises(DataError, match=re.escape(match)):
        load_split(str(tmp_path), "test", img_size=8, in_chans=3)


def test_image_batch_checked_before_decoding(tmp_path: Path, monkeypatch) -> None:
    from PIL import Image

    from farc.data import load_split

    for split in ("train", "val"):
        for i in range(3):
            (tmp_path / split / "a").mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4)).save(tmp_path / split / "a" / f"{i}.png")
    monkeypatch.setenv("FARC_MAX_MEMORY", "1M")
    with pytest.raises(DataError, match=r"3 images of 3x224x224 needs 1\.7 MiB, over the "
                                        r"memory budget of 1\.0 MiB"):
        load_split(str(tmp_path), "test")


# ----------------------------------------------------------------- outputs over inputs
def test_check_outputs_api(tmp_path: Path) -> None:
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    a.write_text("input")
    os.link(a, tmp_path / "hard.npy")
    (tmp_path / "sym.npy").symlink_to(a)
    for out in (a, tmp_path / "sub" / ".." / "a.npy", tmp_path / "hard.npy",
                tmp_path / "sym.npy"):
        with pytest.raises(ConfigError, match=r"-o .* is the input --input .*: writing it "
                                              "would destroy the input"):
            check_outputs({"-o": out}, {"--input": a})
    with pytest.raises(ConfigError, match=r"-o .* and --counters .* are the same file"):
        check_outputs({"--counters": b, "-o": tmp_path / "." / "b.npy"})
    check_outputs({"-o": b, "--counters": None}, {"--input": a, "--labels": None})
    assert a.read_text() == "input"


def _same_path_cases(tmp_path: Path) -> dict:
    prog = base_program().save(tmp_path / "m.farc")
    x = inputs(tmp_path)
    return {
        "run -o = --input": (["run", prog, "--input", x, "-o", x], "is the input --input"),
        "run -o = program": (["run", prog, "--input", x, "-o", prog],
                             "is the input MODEL.farc"),
        "run --counters = -o": (["run", prog, "--input", x, "-o", tmp_path / "o.npy",
                                 "--counters", tmp_path / "o.npy"], "are the same file"),
        "report --html = program": (["report", prog, "--html", prog],
                                    "is the input MODEL.farc"),
        "report --html = --json": (["report", prog, "--html", tmp_path / "r",
                                    "--json", tmp_path / "r"], "are the same file"),
        "inspect --plot = program": (["inspect", prog, "--plot", prog],
                                     "is the input MODEL.farc"),
    }


@pytest.mark.parametrize("case", ["run -o = --input", "run -o = program",
                                  "run --counters = -o", "report --html = program",
                                  "report --html = --json", "inspect --plot = program"])
def test_no_output_over_an_input(tmp_path: Path, case: str) -> None:
    args, match = _same_path_cases(tmp_path)[case]
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    one_line_error(farc(*args), match)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("cmd", ["compile", "export"])
def test_checkpoint_commands_do_not_overwrite_the_checkpoint(pruned_far_checkpoint,
                                                             tmp_path: Path, cmd) -> None:
    ckpt = tmp_path / "m.farc"  # compile's default output for m.pt is m.farc: use the name
    ckpt.write_bytes(Path(pruned_far_checkpoint).read_bytes())
    before = ckpt.read_bytes()
    one_line_error(farc(cmd, ckpt, "-o", ckpt), "is the input")
    if cmd == "compile":  # no -o: CKPT.farc, here the checkpoint itself
        one_line_error(farc(cmd, ckpt), "is the input CKPT")
    assert ckpt.read_bytes() == before


def test_teacher_does_not_overwrite_its_weights(tmp_path: Path) -> None:
    w = tmp_path / "w.pth"
    w.write_bytes(b"weights")
    one_line_error(farc("teacher", "--weights", w, "-o", w), "is the input --weights")
    assert w.read_bytes() == b"weights"


@pytest.mark.parametrize("cmd", ["report", "inspect", "export"])
def test_unwritable_output_fails_before_the_work(tmp_path: Path, monkeypatch, capsys,
                                                 cmd) -> None:
    """A folder that cannot be written (root ignores modes, so mkstemp is made to fail) is
    found before the program or checkpoint is even read, and named as the user gave it."""
    import farc.runtime.program

    import farc.models.checkpoint
    from farc.cli import main

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    def no_work(*a, **k):
        raise AssertionError("the command started working before checking its output")

    monkeypatch.setattr("farc.atomic.tempfile.mkstemp", denied)
    monkeypatch.setattr(farc.runtime.program.Program, "load", no_work)
    monkeypatch.setattr(farc.models.checkpoint, "load_checkpoint", no_work)
    out = tmp_path / "ro" / "out.file"
    flag = {"report": "--html", "inspect": "--plot", "export": "-o"}[cmd]
    with pytest.raises(SystemExit) as exc:
        main([cmd, str(tmp_path / "m.any"), flag, str(out)])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err == f"farc: error: {out}: cannot write in {tmp_path} (Permission denied)"


@pytest.mark.parametrize("cmd", ["run", "report", "inspect"])
def test_missing_output_folder_is_created_by_every_command(tmp_path: Path, cmd) -> None:
    prog, x = base_program().save(tmp_path / "m.farc"), inputs(tmp_path)
    out = tmp_path / "new" / "sub" / ("out.npy" if cmd == "run" else "out.file")  # run: numpy
    args = {"run": ["run", prog, "--input", x, "-o", out],
            "report": ["report", prog, "--json", out],
            "inspect": ["inspect", prog, "--plot", out]}[cmd]
    if cmd != "run":  # reports and occupancy maps need the program's target
        args[1] = isaac_program().save(tmp_path / "m.farc")
    res = farc(*args)
    assert res.returncode == 0, res.stderr
    assert [p.name for p in out.parent.iterdir()] == [out.name]
    assert out.stat().st_mode & 0o777 == file_mode()


# ----------------------------------------------------------------- temp files and modes
def test_write_error_names_the_users_path(tmp_path: Path) -> None:
    def full(tmp: Path) -> None:
        raise OSError(28, "No space left on device", str(tmp))

    with pytest.raises(OutputError, match=rf"^{tmp_path / 'o.npy'}: cannot write it \(No "
                                          r"space left on device\)$"):
        atomic_write(tmp_path / "o.npy", full)
    assert list(tmp_path.iterdir()) == []


def test_stale_temps_of_dead_writers_are_removed_on_the_next_write(tmp_path: Path) -> None:
    dead = tmp_path / ".o.npy.999999999.abcd1234.tmp"  # above pid_max: no such process
    legacy = tmp_path / ".o.npy.abcd1234.tmp"          # an older farc's name, no pid
    live = tmp_path / f".o.npy.{os.getppid()}.abcd1234.tmp"  # a running writer's: kept
    other = tmp_path / ".o.npy.x.999999999.abcd1234.tmp"  # belongs to o.npy.x: not ours
    for p in (dead, legacy, live, other):
        p.write_text("half")
    atomic_write(tmp_path / "o.npy", lambda tmp: tmp.write_text("done"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name,
                                                                 "o.npy"])
    assert remove_stale_temps(tmp_path / "o.npy") == []


SIGTERM_WRITER = """
import sys, time
from pathlib import Path
from farc.atomic import atomic_write, install_signal_cleanup
install_signal_cleanup()
out = Path(sys.argv[1])
def slow(tmp):
    tmp.write_text("half")
    (out.parent / "ready").write_text("")
    time.sleep(60)
atomic_write(out, slow)
"""


def test_sigterm_mid_write_leaves_no_temp_file(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_WRITER, str(tmp_path / "o.npy")])
    deadline = time.monotonic() + 30
    while not (tmp_path / "ready").exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == -signal.SIGTERM  # still dies of the signal
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ready"]


def test_checkpoints_get_the_usual_file_mode(far_digits, tmp_path: Path) -> None:
    """safetensors creates its file 0600; every farc output gets 0666 less the umask."""
    from farc.models.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "m.pt", far_digits, {})
    assert (tmp_path / "m.pt").stat().st_mode & 0o777 == file_mode()
    prog = base_program().save(tmp_path / "m.farc")
    assert prog.stat().st_mode & 0o777 == file_mode()


# ----------------------------------------------------------------- peak memory
HWM_LAUNCH = """
import atexit, os
def _hwm():
    with open("/proc/self/status") as fh:
        kib = next(line.split()[1] for line in fh if line.startswith("VmHWM:"))
    with open(os.environ["FARC_HWM_FILE"], "w") as out:
        out.write(kib)
atexit.register(_hwm)
from farc.cli import main
main()
"""


def farc_peak_mib(args: list, hwm: Path) -> tuple[subprocess.CompletedProcess, float]:
    """Run `farc ARGS` in a fresh process; (its result, its own peak RSS in MiB: VmHWM read
    at exit, since a child's ru_maxrss would include the parent's size at fork).
    bench/bad_inputs_memory.py measures the full-size bombs with it too."""
    res = subprocess.run([sys.executable, "-c", HWM_LAUNCH, *map(str, args)],
                         capture_output=True, text=True,
                         env={**os.environ, "FARC_HWM_FILE": str(hwm)}, check=False)
    return res, int(hwm.read_text()) / 1024


PEAK_MIB = 200
"""Issue 18: refusing a bomb stays under 200 MB (docs/bad-inputs.md has the full-size
figures from bench/bad_inputs_memory.py)."""


def _deflated_listed_member(tmp_path: Path) -> Path:
    """const.c declared float32[2**26] (256 MiB) and stored deflated (about 256 KB)."""
    path = forged(tmp_path, lambda m, a: None, name="deflated.farc")
    with zipfile.ZipFile(path) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    manifest = json.loads(members.pop("manifest.json"))
    manifest["arrays"]["const.c"]["shape"] = [2**26]
    members.pop("arrays/const.c.npy")
    fh = io.BytesIO()
    np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False,
                                              "shape": (2**26,)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", json.dumps(manifest))
        for k, v in members.items():
            zf.writestr(k, v)
        with zf.open("arrays/const.c.npy", "w", force_zip64=True) as out:
            out.write(fh.getvalue())
            for _ in range(16):
                out.write(b"\0" * 2**24)
    return path


@pytest.mark.parametrize("case", ["deflated-256MiB-member", "declared-256GiB-array",
                                  "npy-header-1e12-samples"])
def test_bomb_peak_memory(tmp_path: Path, case: str) -> None:
    x = inputs(tmp_path)
    prog = base_program().save(tmp_path / "m.farc")
    if case == "deflated-256MiB-member":
        prog = _deflated_listed_member(tmp_path)
    elif case == "declared-256GiB-array":
        prog = forged(tmp_path, lambda m, a: None, name="huge.farc")
        manifest = json.loads(zipfile.ZipFile(prog).read("manifest.json"))
        _declare_huge(manifest, {})
        _rewrite_manifest(prog, manifest)
    else:
        x = _npy_header_only(tmp_path / "bomb.npy", (10**12, 12))
    res, peak = farc_peak_mib(["run", prog, "--input", x, "-o", tmp_path / "o.npy"],
                              tmp_path / "hwm")
    one_line_error(res, "error")
    assert peak < PEAK_MIB, f"{case}: peak {peak:.0f} MiB"
