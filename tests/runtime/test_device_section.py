"""The [device] section: a target file names a device preset and overrides it, a program
records it with its target, and `farc run` reads through it unless told otherwise."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from farc.runtime.builder import make_program, pack_layer, scale_for_inputs
from farc.runtime.emulator import Emulator
from farc.runtime.program import Program
from farc.runtime.schema import DeviceSection
from farc.runtime.validate import validate_program
from farc.targets import load_target
from farc.targets.target import Target

from farc.cli import main
from farc.errors import ConfigError, ProgramError

DEVICE = {"preset": "rram_wan2022_1s", "read_sigma": 0.01}


def _target(device: dict | None = None) -> Target:
    data = {"target": {"name": "t"}, "crossbar": {"rows": 8, "cols": 16}}
    return Target.from_dict({**data, "device": device} if device is not None else data)


def test_a_target_file_names_a_preset_and_overrides_it() -> None:
    t = _target(DEVICE)
    assert t.device.prog_model == "rram_wan2022" and t.device.drift_t == 1.0
    assert t.device.read_sigma == 0.01 and t.device.enabled
    # recorded as the fields that differ from the ideal chip, and read back the same
    assert t.to_dict()["device"] == {"read_sigma": 0.01, "prog_model": "rram_wan2022"}
    assert Target.from_dict(t.to_dict()).device == t.device
    assert "device.prog_model='rram_wan2022'" in str(t)


def test_shipped_targets_are_ideal_chips() -> None:
    for name in ("isaac", "puma", "neurosim_rram"):
        t = load_target(name)
        assert t.device == DeviceSection() and "device" not in t.to_dict()


@pytest.mark.parametrize("device,match", [
    ({"read_sigm": 0.01}, "unknown key 'read_sigm' in \\[device\\] \\(did you mean 'read_sigma'"),
    ({"preset": "rram"}, "unknown device model 'rram'"),
    ({"prog_model": "pcm"}, "\\[device\\] prog_model = 'pcm' must be one of"),
    ({"read_sigma": "high"}, "\\[device\\] read_sigma = 'high' must be float"),
    ({"preset": "rram_wan2022_1s", "prog_sigma": 0.02}, "\\[device\\] .*prog_sigma applies to"),
    ({"preset": "rram_wan2022_1s", "drift_t": 60.0}, "fitted at t = 1, 86400, 172800 s"),
])
def test_bad_device_sections_are_refused(device: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _target(device)


def _program(tmp_path: Path, device: dict | None) -> tuple[Path, Path]:
    """A one-layer program placed on a target with the given [device]."""
    target = _target(device)
    rng = np.random.default_rng(0)
    w, x = rng.normal(size=(12, 4)).astype(np.float32), rng.normal(size=(6, 12))
    layer, arrays = pack_layer(w, None, scale_for_inputs(x, 8), target.xbar)
    prog = make_program([{"op": "input", "name": "x", "out": "x"},
                         {"op": "mvm", "layer": 0, "in": ["x"], "out": "y"},
                         {"op": "output", "name": "y", "in": ["y"]}],
                        {"x": [12]}, {"y": [None]}, [(layer, arrays)], target=target.to_dict())
    np.save(tmp_path / "x.npy", x.astype(np.float32))
    return prog.save(tmp_path / "m.farc"), tmp_path / "x.npy"


def _run(capsys, prog: Path, x: Path, out: Path, *extra: str) -> tuple[np.ndarray, str]:
    main(["run", str(prog), "--input", str(x), "-o", str(out), *extra])
    return np.load(out), capsys.readouterr().err


def test_run_reads_the_recorded_device(tmp_path: Path, capsys) -> None:
    prog, x = _program(tmp_path, DEVICE)
    assert Program.load(prog).device == _target(DEVICE).device
    recorded, err = _run(capsys, prog, x, tmp_path / "a.npy")
    assert "device model from the program's target: read_sigma=0.01, " \
           "prog_model=rram_wan2022" in err
    # the same chip as naming it on the command line, and not the ideal one
    named, err = _run(capsys, prog, x, tmp_path / "b.npy", "--device-model", "rram_wan2022_1s",
                      "--noise", "read_sigma=0.01")
    np.testing.assert_array_equal(recorded, named)
    assert "device model from" not in err
    ideal, _ = _run(capsys, prog, x, tmp_path / "c.npy", "--device-model", "ideal")
    exact = Emulator(Program.load(prog)).run({"x": np.load(x)})["y"]
    np.testing.assert_array_equal(ideal, exact)
    assert np.abs(recorded - exact).max() > 0
    # a recorded device model is enough for a Monte-Carlo run
    main(["run", str(prog), "--input", str(x), "--labels", str(_labels(tmp_path)),
          "--seeds", "0..1", "-o", str(tmp_path / "mc.npz")])
    assert "accuracy" in capsys.readouterr().out


def _labels(tmp_path: Path) -> Path:
    np.save(tmp_path / "y.npy", np.zeros(6, dtype=np.int64))
    return tmp_path / "y.npy"


def test_an_ideal_program_records_no_device(tmp_path: Path, capsys) -> None:
    prog, x = _program(tmp_path, None)
    assert Program.load(prog).device is None
    assert "device" not in Program.load(prog).manifest["target"]
    _, err = _run(capsys, prog, x, tmp_path / "a.npy")
    assert "device model" not in err


@pytest.mark.parametrize("record,match", [
    ({"prog_sigma": -1.0}, "prog_sigma = -1.0 must be finite and >= 0"),
    ({"prog_sigm": 0.1}, "unknown key 'prog_sigm' in \\[device\\]"),
    ({"drift_compensation": "column"}, "drift_compensation = 'column' must be one of"),
])
def test_a_tampered_device_record_is_refused(tmp_path: Path, record: dict, match: str) -> None:
    prog = Program.load(_program(tmp_path, DEVICE)[0])
    manifest = copy.deepcopy(prog.manifest)
    manifest["target"]["device"] = record
    with pytest.raises(ProgramError, match=match):
        validate_program(manifest, prog.arrays)


def test_farc_targets_shows_the_device_section(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "160")
    path = tmp_path / "chip.toml"
    path.write_text('[target]\nname = "chip"\n[device]\npreset = "rram_wan2022_1s"  # Wan 2022\n'
                    'read_sigma = 0.01\n')
    main(["targets", str(path)])
    rows = [line for line in capsys.readouterr().out.splitlines() if "rram_wan2022" in line]
    assert any("preset" in r and "Wan 2022" in r for r in rows)
    assert any("prog_model" in r and "preset rram_wan2022_1s" in r for r in rows)
