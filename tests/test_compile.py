"""The compile driver and `farc compile`: IR size vs sequence length, capacity, round trip,
dumps and the CLI."""

import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from farc.runtime.program import Program
from farc.targets import load_target

from farc.commands.compile import op_counts
from farc.compiler.driver import CompileOptions, compile_checkpoint
from farc.compiler.importer import import_model
from farc.errors import PassError
from farc.models.deit import DeiTConfig
from farc.models.far import FAR, FARConfig

sys.path.insert(0, str(Path(__file__).parent / "passes"))
from _pass_models import images, tiny

pytestmark = pytest.mark.tvm


def _far(img_size: int) -> FAR:
    torch.manual_seed(0)
    cfg = DeiTConfig(img_size=img_size, patch_size=2, in_chans=1, num_classes=3,
                     embed_dim=16, depth=1, num_heads=2, mlp_ratio=2.0)
    return FAR(FARConfig.dense(cfg)).eval()


def _bindings(mod) -> int:
    return sum(len(blk.bindings) for _, f in mod.functions.items() for blk in f.body.blocks)


def test_17_and_197_tokens_import_to_the_same_ir_size():
    short, long = _far(8), _far(28)
    assert short.cfg.deit.num_tokens == 17 and long.cfg.deit.num_tokens == 197
    assert _bindings(import_model(short).mod) == _bindings(import_model(long).mod)


def test_program_size_does_not_grow_with_tokens():
    target = load_target("isaac")
    sizes = []
    for img in (8, 28):
        opts = CompileOptions(data=None, calib_samples=2)
        code = compile_checkpoint(_far(img), target, opts).instructions
        sizes.append(sum(op_counts(code).values()))
    assert sizes[0] == sizes[1]


def test_capacity_error():
    small = load_target("isaac").with_overrides(**{"chip.tiles": 1, "chip.imas_per_tile": 1,
                                                   "chip.crossbars_per_ima": 4})
    with pytest.raises(PassError, match=r"^model needs [\d,]+ crossbars, target 'isaac' has 4$"):
        compile_checkpoint(tiny("far"), small, CompileOptions(calib_images=images(4)))


def test_program_round_trip_and_dump_dir(tmp_path):
    opts = CompileOptions(calib_images=images(4), dump_dir=tmp_path / "ir")
    program = compile_checkpoint(tiny("pruned"), load_target("isaac"), opts)
    path = program.save(tmp_path / "m.farc")
    back = Program.load(path)
    assert back.manifest["instructions"] == program.manifest["instructions"]
    assert back.manifest["layers"] == program.manifest["layers"]
    for name, arr in program.arrays.items():
        np.testing.assert_array_equal(back.arrays[name], arr)
    names = sorted(p.name for p in (tmp_path / "ir").iterdir())
    assert names == ["01-import.py", "02-legalize.py", "03-partition.py",
                     "03-partition.state.json", "04-quantize.py", "04-quantize.state.json",
                     "05-tile.py", "05-tile.state.json", "06-schedule.py",
                     "06-schedule.state.json", "07-program.json"]
    assert "farc.lstm_scan" in (tmp_path / "ir" / "02-legalize.py").read_text()
    # the state beside the dumps is the program's: same codes, same placement
    state = json.loads((tmp_path / "ir" / "06-schedule.state.json").read_text())
    for layer in program.manifest["layers"]:
        codes = program.arrays[layer["arrays"]["codes"]]
        seen = state[layer["name"]]
        assert seen["farc.codes"]["sha256"] == hashlib.sha256(codes.tobytes()).hexdigest()
        assert seen["farc.codes"]["shape"] == list(codes.shape)
        assert seen["farc.crossbars"] == layer["crossbars"]
    assert "farc.q" in json.loads((tmp_path / "ir" / "04-quantize.state.json").read_text())[
        "head"]
    assert set(opts.timings) >= {"calibrate", "import", "legalize", "emit"}


def test_cli_compile_with_overrides_and_onnx(tmp_path, capsys):
    from farc.cli import main
    from farc.models.checkpoint import save_checkpoint

    ckpt = tmp_path / "far.ckpt"
    # an infinite setting in the provenance (as farc finetune records an ideal on/off ratio)
    save_checkpoint(ckpt, tiny("far"), {"note": "test", "noise": {"on_off_ratio": math.inf}})
    out = tmp_path / "far.farc"
    main(["compile", str(ckpt), "--target", "isaac", "--weight-bits", "6", "--adc-bits", "9",
          "--mapping", "differential", "--calib-samples", "4", "--emit-onnx", "-o", str(out)])
    assert (tmp_path / "far.float.onnx").is_file() and (tmp_path / "far.qdq.onnx").is_file()
    program = Program.load(out)
    assert program.manifest["target"]["quant"]["weight_bits"] == 6
    assert program.manifest["target"]["quant"]["mapping"] == "differential"
    assert program.manifest["model"]["provenance"]["checkpoint"] == str(ckpt.resolve())
    # strict JSON in the manifest, so Program.load (above) accepts what compile wrote
    assert program.manifest["model"]["provenance"]["noise"] == {"on_off_ratio": "inf"}
    assert "crossbars" in capsys.readouterr().out


def test_cli_rejects_bad_override(tmp_path, capsys):
    from farc.cli import main
    from farc.models.checkpoint import save_checkpoint

    ckpt = tmp_path / "far.ckpt"
    save_checkpoint(ckpt, tiny("far"), {})
    with pytest.raises(SystemExit) as exc:
        main(["compile", str(ckpt), "--weight-bits", "1", "-o", str(tmp_path / "x.farc")])
    assert exc.value.code == 1
    assert "weight_bits" in capsys.readouterr().err


def test_import_maps_overlapping_conv_and_refuses_groups():
    """An overlapping conv (issue 24) imports as one farc.im2col gather and one matmul over
    its patches; a grouped one is a PassError naming its layer."""
    from farc.passes._crossbar_ir import IM2COL_EXTERN, is_extern_call

    class Overlapping(torch.nn.Module):
        cfg = DeiTConfig(img_size=4, patch_size=2, in_chans=1, embed_dim=8, num_heads=2)

        def __init__(self, groups: int = 1):
            super().__init__()
            self.proj = torch.nn.Conv2d(2, 4, 3, stride=1, padding=1, groups=groups)

        def forward(self, x):
            return self.proj(torch.cat([x, x], dim=1))

    mod = import_model(Overlapping()).mod
    values = [b.value for blk in mod["main"].body.blocks for b in blk.bindings]
    gathers = [v for v in values if is_extern_call(v, "relax.call_dps_packed", IM2COL_EXTERN)]
    assert len(gathers) == 1
    assert [int(d) for d in gathers[0].ty.shape] == [1, 16, 2 * 9]
    with pytest.raises(PassError, match="proj: only convolutions of one group"):
        import_model(Overlapping(groups=2))
