"""ScheduleCrossbar: weight-stationary placement, capacity error, replication, loop groups."""

import pytest
from _pass_models import TINY, calibrated, partitioned
from farc.passes._crossbar_ir import crossbar_functions, is_scan
from farc.passes.quantize_crossbar import QuantizeCrossbar
from farc.passes.schedule_crossbar import ScheduleCrossbar
from farc.passes.tile_crossbar import TileCrossbar
from farc.targets import load_target

from farc.errors import PassError

pytestmark = pytest.mark.tvm


def _target(crossbars: int):
    return load_target("isaac").with_overrides(**{
        "crossbar.rows": 8, "crossbar.cols": 16, "quant.weight_bits": 4,
        "chip.tiles": crossbars, "chip.imas_per_tile": 1, "chip.crossbars_per_ima": 1})


def _schedule(kind, target, replicate=False):
    """The scheduled module and its crossbar functions by layer name."""
    calib = calibrated(kind)
    mod = TileCrossbar(target, calib)(QuantizeCrossbar(target, calib)(partitioned(kind)))
    mod = ScheduleCrossbar(target, replicate)(mod)
    return mod, {str(f.attrs["farc.layer"]): f for _, f in crossbar_functions(mod)}


def _crossbars(layers: dict) -> list[int]:
    return [int(i) for f in layers.values() for rep in f.attrs["farc.crossbars"] for i in rep]


def _replicas(f) -> int:
    return int(f.attrs["farc.replicas"])


def _needed(kind) -> int:
    _, layers = _schedule(kind, _target(100_000))
    return sum(len(f.attrs["farc.crossbars"][0]) for f in layers.values())


def test_capacity_error_names_both_numbers():
    need = _needed("far")
    with pytest.raises(PassError, match=rf"model needs {need:,} crossbars, target 'isaac' "
                                        rf"has {need - 1:,}"):
        _schedule("far", _target(need - 1))


def test_every_tile_gets_its_own_crossbar():
    need = _needed("far")
    mod, layers = _schedule("far", _target(need))  # exactly fits
    assert sorted(_crossbars(layers)) == list(range(need))
    assert int(mod.attrs["farc.schedule"]["crossbars_used"]) == need


def test_replication_uses_spare_capacity_for_busy_layers():
    need = _needed("far")
    _, layers = _schedule("far", _target(3 * need), replicate=True)
    ids = _crossbars(layers)
    assert len(ids) == len(set(ids)) <= 3 * need
    assert len(ids) > need
    for f in layers.values():
        assert 1 <= _replicas(f) <= max(int(f.attrs["farc.vectors"]), 1)
        assert len(f.attrs["farc.crossbars"]) == _replicas(f)
    # the classifier sees one vector per image: never replicated
    assert _replicas(layers["head"]) == 1
    assert max(map(_replicas, layers.values())) <= TINY.num_tokens


def test_do_not_replicate_without_the_flag():
    _, layers = _schedule("far", _target(10 * _needed("far")))
    assert all(_replicas(f) == 1 for f in layers.values())


def test_independent_lstms_of_a_block_are_adjacent():
    mod, _ = _schedule("far", _target(100_000))
    groups = mod.attrs["farc.schedule"]["loop_groups"]
    assert len(groups) == TINY.depth
    assert all(len(g) == 2 * TINY.num_heads for g in groups)
    flags = [is_scan(b.value) for b in mod["main"].body.blocks[0].bindings]
    runs = "".join("s" if f else "." for f in flags).split(".")
    assert sorted(len(r) for r in runs if r) == [2 * TINY.num_heads] * TINY.depth


def test_reordered_main_is_well_formed():
    # Regression: the rebuilt SeqExpr had no type, which Relax's checker refuses.
    from tvm import relax

    for kind in ("deit", "far"):
        mod, _ = _schedule(kind, _target(100_000))
        relax.analysis.well_formed(mod)  # raises when not
