"""The typed, frozen `Target`: one TOML file -> one object read by compiler, emulator and
cost model alike. Unknown keys and bad values are refused with the section, key and a
suggestion, so a typo in a target file never silently falls back to a default.

Each section is a dataclass; the string literal under a field is its documentation (unit,
range, caveats) and is what `docs/targets.md` and `farc targets` show."""

from __future__ import annotations

import difflib
import math
import tomllib
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

from farc.runtime.numerics import (
    ADC_GRANULARITIES,
    ADC_RANGES,
    ADC_STATISTICS,
    INPUT_ENCODINGS,
    MAPPINGS,
    STEP_RULES,
    XbarParams,
    chip_crossbars,
    limit_violation,
)
from farc.targets.cost_specs import (
    COST_SPECS,
    POSITIVE,
    TOPOLOGIES,
    AreaSpec,
    DigitalSpec,
    EnergySpec,
    InterconnectSpec,
    LatencySpec,
    PowerSpec,
    PublishedSpec,
    WriteSpec,
)

from farc.errors import ConfigError
from farc.limits import MAX_CROSSBARS

TARGET_DIR = Path(__file__).parent


@dataclass(frozen=True)
class CrossbarSpec:
    rows: int = 128
    """Word lines per crossbar (inputs). Power of two, 8..4096."""
    cols: int = 128
    """Bit lines per crossbar (physical columns). Power of two, 8..4096."""
    cell_bits: int = 2
    """Bits stored per ReRAM cell (conductance levels = 2**cell_bits). 1..8."""


@dataclass(frozen=True)
class ChipSpec:
    tiles: int = 168
    """Tiles on the chip."""
    imas_per_tile: int = 12
    """In-situ multiply-accumulate units (IMAs) per tile."""
    crossbars_per_ima: int = 8
    """Crossbars per IMA."""

    @property
    def crossbars(self) -> int:
        """Physical crossbars on the chip: tiles * imas_per_tile * crossbars_per_ima."""
        return chip_crossbars(asdict(self))


@dataclass(frozen=True)
class DacSpec:
    bits: int = 1
    """Input bits applied per cycle (1 = bit-serial). 1..8."""


@dataclass(frozen=True)
class AdcSpec:
    bits: int = 8
    """ADC resolution in bits. 1..16."""
    range: str = "full"
    """'full': the ADC spans the largest possible partial sum (rows * (2**dac_bits-1) *
    (2**cell_bits-1)); 'calibrated': the compiler sets each crossbar's range from the
    partial sums seen on calibration inputs."""
    columns_per_adc: int = 128
    """Columns that share one ADC (time-multiplexed); bounds column throughput."""
    flip: bool = False
    """ISAAC's flip encoding (ISCA 2016 Sec. 5.2): a column whose levels sum above half the
    maximum is stored complemented and recovered digitally, so partial sums never exceed
    half the full range and the ADC needs one bit fewer."""
    granularity: str = "tile"
    """'tile': one ADC range per (layer, row tile); 'slice': one per (layer, row tile,
    weight slice), so the low slices' wide sums do not set the step of the top slice,
    whose sums are small and weigh most."""
    step_rule: str = "pow2"
    """'pow2': the step is a power of two (a shift); 'uniform': any multiple of 1/256 >= 1,
    the tightest step for the range (a multiplier in the periphery)."""
    statistic: str = "max"
    """With range = 'calibrated': cover the largest partial sum seen ('max') or the
    `percentile` of them ('percentile'; larger sums clip, counted at compile time)."""
    percentile: float = 99.99
    """Percentile of the calibration partial sums a 'percentile' range covers, (50, 100]."""


@dataclass(frozen=True)
class QuantSpec:
    weight_bits: int = 8
    """Signed weight bits incl. sign: q in [-(2**(B-1)-1), 2**(B-1)-1], per output column."""
    input_bits: int = 8
    """Signed input bits incl. sign, per-tensor calibrated scale, offset-encoded on the DAC."""
    mapping: str = "differential"
    """'differential': G+/G- column pair per weight slice; 'offset': one column per slice
    holding q + 2**(B-1)-1, the offset removed digitally."""
    calibration: str = "max"
    """Input-range calibration policy: 'max' or 'percentile'."""
    input_encoding: str = "offset"
    """How signed inputs reach the rows: 'offset' (u = x + 2**(B-1) on the DAC, zero point
    removed digitally) or 'sign_magnitude' (|x| in two phases, positive rows then negative
    rows, the second phase subtracted: twice the cycles of B-1 magnitude bits, no constant
    offset in the partial sums)."""
    percentile: float = 99.99
    """Percentile of |x| used when calibration = 'percentile'."""


SECTIONS: dict[str, type] = {
    "crossbar": CrossbarSpec,
    "chip": ChipSpec,
    "dac": DacSpec,
    "adc": AdcSpec,
    "quant": QuantSpec,
}
# Sections the cost model reads (typed, see cost_specs.py); validated here like the others.
COST_SECTIONS = tuple(COST_SPECS)
ALL_SECTIONS: dict[str, type] = {**SECTIONS, **COST_SPECS}


@dataclass(frozen=True)
class Target:
    """A crossbar accelerator. Built only through `load_target` / `Target.from_dict`."""

    name: str
    description: str = ""
    crossbar: CrossbarSpec = field(default_factory=CrossbarSpec)
    chip: ChipSpec = field(default_factory=ChipSpec)
    dac: DacSpec = field(default_factory=DacSpec)
    adc: AdcSpec = field(default_factory=AdcSpec)
    quant: QuantSpec = field(default_factory=QuantSpec)
    latency: LatencySpec = field(default_factory=LatencySpec)
    """Per-event latencies (crossbar read, ADC rate, pipeline, buffer bandwidth)."""
    energy: EnergySpec = field(default_factory=EnergySpec)
    """Per-event energies of the analog datapath, buffers and interconnect."""
    area: AreaSpec = field(default_factory=AreaSpec)
    """Component areas, for the area of the crossbars and periphery a program uses."""
    write: WriteSpec = field(default_factory=WriteSpec)
    """Crossbar programming cost and endurance (attention costed as crossbar rewrites)."""
    digital: DigitalSpec = field(default_factory=DigitalSpec)
    """Digital vector units and the digital matmul unit."""
    interconnect: InterconnectSpec = field(default_factory=InterconnectSpec)
    """On-chip network between tiles: topology, concentration, link bandwidth, hop latency."""
    power: PowerSpec = field(default_factory=PowerSpec)
    """Peak power of the periphery the per-event costs do not cover (for chip totals)."""
    published: PublishedSpec = field(default_factory=PublishedSpec)
    """The paper's own totals (IMA/core, tile, chip), shown beside the model's."""
    costs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The cost sections as given in the file (raw dicts; kept for older readers; the typed
    sections above are authoritative)."""

    # ---- derived values: the crossbar numerics module computes them, once per Target ----
    @cached_property
    def xbar(self) -> XbarParams:
        """The crossbar parameters every layer is packed with on this target (bit widths,
        geometry, ADC policy); passes, cost model and reports read derived values here."""
        return XbarParams.from_target(self)

    @property
    def weight_slices(self) -> int:
        """Cells per weight magnitude (farc.runtime.numerics.weight_slices)."""
        return self.xbar.slices

    @property
    def signs(self) -> int:
        """Physical columns per weight slice: 2 for a differential pair, 1 for offset."""
        return self.xbar.signs

    @property
    def input_cycles(self) -> int:
        """DAC cycles per MVM: ceil(input_bits / dac_bits)."""
        return self.xbar.cycles

    @property
    def max_partial_sum(self) -> int:
        """Largest value one column can sum in one cycle (flip encoding included)."""
        return self.xbar.pmax

    @property
    def adc_lossless(self) -> bool:
        """True when a full-range ADC resolves every partial sum exactly."""
        return self.xbar.full_range_lossless

    @property
    def crossbars(self) -> int:
        return self.chip.crossbars

    def __str__(self) -> str:
        """`Target(name, [section] key=value ...)` with only the non-default values."""
        default = Target(name=self.name)
        diffs = []
        for sec in ALL_SECTIONS:
            mine, base = getattr(self, sec), getattr(default, sec)
            diffs += [f"{sec}.{f.name}={getattr(mine, f.name)!r}" for f in fields(mine)
                      if getattr(mine, f.name) != getattr(base, f.name)]
        return f"Target({self.name!r}{', ' if diffs else ''}{', '.join(diffs)})"

    def with_overrides(self, **kw: Any) -> Target:
        """A copy with `section.key` overrides, e.g. with_overrides(**{"adc.bits": 6})."""
        data = self.to_dict()
        for dotted, value in kw.items():
            if value is None:
                continue
            section, _, key = dotted.partition(".")
            data.setdefault(section, {})[key] = value
        return Target.from_dict(data, source="overrides")

    def to_dict(self) -> dict[str, Any]:
        """The TOML-shaped dict this target was built from (with defaults filled in)."""
        out: dict[str, Any] = {"target": {"name": self.name, "description": self.description}}
        for sec in ALL_SECTIONS:
            spec = getattr(self, sec)
            out[sec] = {f.name: getattr(spec, f.name) for f in fields(spec)}
        return out

    @staticmethod
    def from_dict(data: dict[str, Any], source: str = "<dict>") -> Target:
        """Validate a TOML-shaped dict and build the Target; ConfigError on any bad key/value."""
        known = ["target", *ALL_SECTIONS]
        for sec in data:
            if sec not in known:
                raise ConfigError(f"{source}: unknown section [{sec}]{_suggest(sec, known)}")
            if sec != "target" and not isinstance(data[sec], dict):
                raise ConfigError(f"{source}: [{sec}] must be a table, got {data[sec]!r}")
        head = data.get("target", {})
        _check_keys(head, ["name", "description"], "target", source)
        if "name" not in head:
            raise ConfigError(f"{source}: [target] needs a name")
        specs = {}
        for sec, cls in ALL_SECTIONS.items():
            vals = data.get(sec, {})
            _check_keys(vals, [f.name for f in fields(cls)], sec, source)
            for f in fields(cls):
                if f.name in vals:
                    _check_type(vals[f.name], type(getattr(cls(), f.name)), sec, f.name, source)
            specs[sec] = cls(**vals)
        costs = {sec: dict(data[sec]) for sec in COST_SECTIONS if sec in data}
        target = Target(name=str(head["name"]), description=str(head.get("description", "")),
                        costs=costs, **specs)
        _check_ranges(target, source)
        _check_costs(target, source)
        return target


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_keys(vals: dict, allowed: list[str], section: str, source: str) -> None:
    for key in vals:
        if key not in allowed:
            raise ConfigError(f"{source}: unknown key {key!r} in [{section}]"
                              f"{_suggest(key, allowed)}")


def _check_type(value: Any, want: type, section: str, key: str, source: str) -> None:
    ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise ConfigError(f"{source}: [{section}] {key} = {value!r} must be {want.__name__}")


def _check_ranges(t: Target, source: str) -> None:
    def bad(section: str, key: str, value: Any, rule: str) -> ConfigError:
        return ConfigError(f"{source}: [{section}] {key} = {value!r} {rule}")

    xb = t.crossbar
    for section, key, value in (("crossbar", "rows", xb.rows), ("crossbar", "cols", xb.cols),
                                ("crossbar", "cell_bits", xb.cell_bits),
                                ("dac", "bits", t.dac.bits), ("adc", "bits", t.adc.bits),
                                ("quant", "weight_bits", t.quant.weight_bits),
                                ("quant", "input_bits", t.quant.input_bits)):
        rule = limit_violation(key if section in ("crossbar", "quant") else f"{section}_bits",
                               value)
        if rule:
            raise bad(section, key, value, rule)
    if t.adc.range not in ADC_RANGES:
        raise bad("adc", "range", t.adc.range, "must be 'full' or 'calibrated'")
    for section, key, allowed in (("adc", "granularity", ADC_GRANULARITIES),
                                  ("adc", "step_rule", STEP_RULES),
                                  ("adc", "statistic", ADC_STATISTICS),
                                  ("quant", "input_encoding", INPUT_ENCODINGS),
                                  ("interconnect", "topology", TOPOLOGIES)):
        value = getattr(getattr(t, section), key)
        if value not in allowed:
            raise bad(section, key, value, f"must be one of {', '.join(map(repr, allowed))}")
    if not 50.0 < t.adc.percentile <= 100.0:
        raise bad("adc", "percentile", t.adc.percentile, "must be in (50, 100]")
    if t.adc.columns_per_adc < 1:
        raise bad("adc", "columns_per_adc", t.adc.columns_per_adc, "must be >= 1")
    q = t.quant
    if q.mapping not in MAPPINGS:
        raise bad("quant", "mapping", q.mapping, "must be 'differential' or 'offset'")
    if q.calibration not in ("max", "percentile"):
        raise bad("quant", "calibration", q.calibration, "must be 'max' or 'percentile'")
    if not 50.0 < q.percentile <= 100.0:
        raise bad("quant", "percentile", q.percentile, "must be in (50, 100]")
    for key in ("tiles", "imas_per_tile", "crossbars_per_ima"):
        if getattr(t.chip, key) < 1:
            raise bad("chip", key, getattr(t.chip, key), "must be >= 1")
    if t.chip.crossbars > MAX_CROSSBARS:
        raise bad("chip", "tiles", t.chip.tiles, f"gives {t.chip.crossbars:,} crossbars, over "
                  f"the limit of {MAX_CROSSBARS:,}")


def _check_costs(t: Target, source: str) -> None:
    rule = limit_violation("adc_bits", t.energy.adc_reference_bits)  # the ADC's own range
    if rule:
        raise ConfigError(f"{source}: [energy] adc_reference_bits = "
                          f"{t.energy.adc_reference_bits!r} {rule}")
    for sec in COST_SECTIONS:
        spec = getattr(t, sec)
        for f in fields(spec):
            v = getattr(spec, f.name)
            if isinstance(v, str):
                continue
            if (sec, f.name) in POSITIVE and not v > 0:
                raise ConfigError(f"{source}: [{sec}] {f.name} = {v!r} must be > 0")
            if not (v >= 0 and math.isfinite(v)):
                raise ConfigError(f"{source}: [{sec}] {f.name} = {v!r} must be finite and >= 0")


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a section dataclass (unit, range), read from the
    source: what `farc targets NAME` and docs/targets.md show."""
    import ast
    import inspect
    import itertools
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in itertools.pairwise(body):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and \
                isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def list_targets() -> list[str]:
    """Names of the targets shipped in targets/*.toml."""
    return sorted(p.stem for p in TARGET_DIR.glob("*.toml"))


def load_target(name_or_path: str | Path) -> Target:
    """Load a shipped target by name ('isaac') or any TOML file by path."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = TARGET_DIR / f"{name_or_path}.toml"
        if not path.exists():
            raise ConfigError(f"unknown target {str(name_or_path)!r}; shipped targets: "
                              f"{', '.join(list_targets())} (or give a .toml path)")
    if not path.exists():
        raise ConfigError(f"target file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return Target.from_dict(data, source=str(path))
