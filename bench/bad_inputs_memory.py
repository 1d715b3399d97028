"""Peak memory of farc refusing the bomb inputs of issue 18, at full size:
`python -m bench.bad_inputs_memory [--keep DIR]`.

Each bomb is built in a temp folder (the deflated one really inflates to 2 GiB; the others
declare their sizes in headers), then the CLI runs on it in a fresh process; the peak
resident set size of that process (its own VmHWM, read at exit) is reported next to the same
command on a small valid input, so the table shows what the refusal itself costs. Prints a
markdown table (docs/bad-inputs.md quotes it). Not part of the test suite; the small-file
versions of these cases are tests/test_hostile_inputs.py."""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "targets"))


def peak_rss(args: list[str], hwm: Path) -> tuple[int, float, str]:
    """(exit code, peak RSS in MiB, last stderr line) of `farc ARGS` in a fresh process
    (tests/test_hostile_inputs.farc_peak_mib)."""
    from test_hostile_inputs import farc_peak_mib

    res, mib = farc_peak_mib(args, hwm)
    lines = res.stderr.strip().splitlines()
    return res.returncode, mib, lines[-1] if lines else ""


def _deflated_2gib(good: Path, out: Path) -> Path:
    """The valid program plus a 2 GiB member of zeros, deflated (about 2 MB on disk)."""
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
        with dst.open("arrays/padding.npy", "w", force_zip64=True) as fh:
            block = b"\0" * 2**24
            for _ in range(128):
                fh.write(block)
    return out


def build(d: Path) -> list[tuple[str, list, list]]:
    """(case, bomb command, the same command on a valid input)."""
    from farc.runtime.builder import XbarParams, make_program, pack_layer, scale_for_inputs
    from test_hostile_inputs import (
        _loop_over_zeros,
        _npy_header_only,
        _png_header,
        base_program,
        forged,
        isaac_program,
    )

    good = base_program().save(d / "good.farc")
    isaac = isaac_program().save(d / "isaac.farc")
    x = d / "x.npy"
    np.save(x, np.random.default_rng(0).normal(size=(5, 12)).astype(np.float32))
    huge = forged(d, lambda m, a: None, name="huge.farc")
    with zipfile.ZipFile(huge) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    manifest = json.loads(members["manifest.json"])
    manifest["arrays"]["layer0.codes"]["shape"] = [2**20, 2**16, 4]
    members["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(huge, "w") as zf:
        for k, v in members.items():
            zf.writestr(k, v)
    deep = d / "deep.farc"
    with zipfile.ZipFile(deep, "w") as zf:
        zf.writestr("manifest.json", '{"format": "farc-tile-program", "version": 1, "x": '
                    + "[" * 200_000 + "]" * 200_000 + "}")
    loop = forged(d, _loop_over_zeros, name="loop.farc")
    zeros = forged(d, lambda m, a: m["instructions"].insert(1, {
        "op": "zeros", "in": ["x"], "shape": [10**6, 10**6], "out": "big"}), name="zeros.farc")
    ids = forged(d, lambda m, a: m["layers"][0].update(crossbars=[[10**8] * len(
        m["layers"][0]["crossbars"][0])]), isaac_program(), name="ids.farc")
    npy = _npy_header_only(d / "bomb.npy", (10**12, 12))
    npz = d / "bomb.npz"
    fh = io.BytesIO()
    np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False,
                                              "shape": (10**12, 12)})
    with zipfile.ZipFile(npz, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x.npy", fh.getvalue() + b"\0" * 64)
    rng = np.random.default_rng(0)
    layer, arrays = pack_layer(rng.normal(size=(192, 4)).astype(np.float32), None,
                               scale_for_inputs(np.ones(1), 8), XbarParams().with_overrides(
                                   **{"crossbar.rows": 8, "crossbar.cols": 16}))
    img_prog = make_program([{"op": "input", "name": "x", "out": "x"},
                             {"op": "reshape", "in": ["x"], "shape": [192], "out": "f"},
                             {"op": "mvm", "layer": 0, "in": ["f"], "out": "y"},
                             {"op": "output", "name": "y", "in": ["y"]}],
                            {"x": [3, 8, 8]}, {"y": [4]}, [(layer, arrays)]).save(d / "img.farc")
    from PIL import Image

    for split in ("train", "val"):
        _png_header(d / "pngs" / split / "a" / "big.png", 20000, 20000)
        (d / "ok" / split / "a").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(d / "ok" / split / "a" / "small.png")
    o = d / "out.npy"
    run_ok = ["run", good, "--input", x, "-o", o]
    return [
        ("array declared 256 GiB (.farc)", ["run", huge, "--input", x, "-o", o], run_ok),
        ("member deflated to 2 GiB (.farc)",
         ["run", _deflated_2gib(good, d / "deflated.farc"), "--input", x, "-o", o], run_ok),
        ("manifest nested 200,000 deep", ["run", deep, "--input", x, "-o", o], run_ok),
        ("loop over zeros [1e9, 0]", ["run", loop, "--input", x, "-o", o], run_ok),
        ("zeros of 10^12 elements", ["run", zeros, "--input", x, "-o", o], run_ok),
        ("crossbar ids of 1e8, inspect --plot", ["inspect", ids, "--plot", d / "map.png"],
         ["inspect", isaac, "--plot", d / "map.png"]),
        (".npy header of 10^12 samples", ["run", good, "--input", npy, "-o", o], run_ok),
        (".npz member of 10^12 samples", ["run", good, "--input", npz, "-o", o], run_ok),
        ("PNGs declaring 20000x20000 (--data)",
         ["run", img_prog, "--data", d / "pngs", "-o", o],
         ["run", img_prog, "--data", d / "ok", "-o", o]),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, default=None, help="Build the bombs here and keep them.")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = args.keep or Path(tmp)
        d.mkdir(parents=True, exist_ok=True)
        rows = []
        for case, bomb, ok in build(d):
            rc, peak, err = peak_rss(bomb, d / "hwm")
            rc_ok, peak_ok, _ = peak_rss(ok, d / "hwm")
            rows.append((case, f"farc {bomb[0]}", rc, f"{peak:.0f}", f"{peak_ok:.0f}",
                         f"{peak - peak_ok:+.0f}", err.split(": ", 2)[-1][:90]))
            print(f"{case}: exit {rc}, {peak:.0f} MiB (valid input {peak_ok:.0f} MiB, exit "
                  f"{rc_ok})", file=sys.stderr)
    head = ("case", "command", "exit", "peak RSS MiB", "same command, valid input",
            "difference", "error (tail)")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |")


if __name__ == "__main__":
    main()
