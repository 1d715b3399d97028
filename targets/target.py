"""The typed, frozen `Target`: one TOML file -> one object read by compiler, emulator and
cost model alike. Unknown keys and bad values are refused with the section, key and a
suggestion, so a typo in a target file never silently falls back to a default.

Each section is a dataclass; the string literal under a field is its documentation (unit,
range, caveats) and is what `docs/targets.md` and `farc targets` show."""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any

from farc.runtime.devices import parse_device
from farc.runtime.numerics import XbarParams, chip_crossbars
from farc.runtime.schema import (
    XBAR_SECTIONS,
    AdcSection,
    CrossbarSection,
    DacSection,
    DeviceSection,
    QuantSection,
    check_keys,
    field_docs,  # noqa: F401  (re-exported: report/targets_view reads section docs here)
    limit_violation,
    parse_section,
    section_dict,
    suggest,
)
from farc.targets.cost_specs import (
    ADC_LAWS,
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


SECTIONS: dict[str, type] = {**XBAR_SECTIONS, "chip": ChipSpec}
"""The crossbar sections (the runtime's schema, runtime/schema.py) and the chip."""
# Sections the cost model reads (typed, see cost_specs.py); validated here like the others.
COST_SECTIONS = tuple(COST_SPECS)
ALL_SECTIONS: dict[str, type] = {**SECTIONS, **COST_SPECS}


@dataclass(frozen=True)
class Target:
    """A crossbar accelerator. Built only through `load_target` / `Target.from_dict`."""

    name: str
    description: str = ""
    crossbar: CrossbarSection = field(default_factory=CrossbarSection)
    chip: ChipSpec = field(default_factory=ChipSpec)
    dac: DacSection = field(default_factory=DacSection)
    adc: AdcSection = field(default_factory=AdcSection)
    quant: QuantSection = field(default_factory=QuantSection)
    device: DeviceSection = field(default_factory=DeviceSection)
    """The chip's devices and periphery as a real chip has them ([device]: a preset of
    runtime/devices.py and overrides; the ideal chip when absent). A program records it
    with its target, and `farc run` / `verify` / `finetune` read through it unless told
    otherwise (docs/devices.md)."""
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
        """The crossbar parameters every layer is packed with on this target: its own
        crossbar, dac, adc and quant sections (the same objects, not a copy)."""
        return XbarParams(self.crossbar, self.dac, self.adc, self.quant)

    @property
    def crossbars(self) -> int:
        return self.chip.crossbars

    def __str__(self) -> str:
        """`Target(name, [section] key=value ...)` with only the non-default values."""
        default = Target(name=self.name)
        diffs = []
        for sec in ALL_SECTIONS:
            mine, base = getattr(self, sec), getattr(default, sec)
            diffs += [f"{sec}.{f.name}={_plain(getattr(mine, f.name))!r}" for f in fields(mine)
                      if getattr(mine, f.name) != getattr(base, f.name)]
        diffs += [f"device.{k}={v!r}" for k, v in self.device.changed().items()]
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
            out[sec] = section_dict(spec)
        if self.device.changed():  # only what differs from the ideal chip (finite numbers)
            out["device"] = self.device.changed()
        return out

    @staticmethod
    def from_dict(data: dict[str, Any], source: str = "<dict>") -> Target:
        """Validate a TOML-shaped dict and build the Target; ConfigError on any bad key/value."""
        known = ["target", *ALL_SECTIONS, "device"]
        for sec in data:
            if sec not in known:
                raise ConfigError(f"{source}: unknown section [{sec}]{suggest(sec, known)}")
        head = data.get("target", {})
        if not isinstance(head, dict):
            raise ConfigError(f"{source}: [target] must be a table, got {head!r}")
        check_keys(head, ["name", "description"], "target", source)
        if "name" not in head:
            raise ConfigError(f"{source}: [target] needs a name")
        specs = {sec: parse_section(cls, data.get(sec, {}), sec, source)
                 for sec, cls in XBAR_SECTIONS.items()}
        for sec, cls in {"chip": ChipSpec, **COST_SPECS}.items():
            vals = data.get(sec, {})
            if not isinstance(vals, dict):
                raise ConfigError(f"{source}: [{sec}] must be a table, got {vals!r}")
            check_keys(vals, [f.name for f in fields(cls)], sec, source)
            for f in fields(cls):
                if f.name in vals:
                    _check_type(vals[f.name], type(getattr(cls(), f.name)), sec, f.name, source)
            specs[sec] = cls(**vals)
        specs["device"] = parse_device(data.get("device", {}), source)
        costs = {sec: dict(data[sec]) for sec in COST_SECTIONS if sec in data}
        target = Target(name=str(head["name"]), description=str(head.get("description", "")),
                        costs=costs, **specs)
        _check_chip(target, source)
        _check_costs(target, source)
        return target


ADC_POLICY_KEYS = ("adc.range", "adc.granularity", "adc.step_rule", "adc.statistic",
                   "adc.percentile")
"""The keys that choose how an ADC's range is set: a user who gives any of them has chosen."""
LOSSY_ADC_POLICY = {"adc.range": "calibrated", "adc.granularity": "slice",
                    "adc.step_rule": "uniform", "adc.statistic": "mse"}
"""The ADC policy below a lossless width (docs/numerics.md, "The default below a lossless
ADC"): ranges calibrated per weight slice on the calibration data, the tightest (uniform)
step, at the clip point with the least squared ADC error on the partial sums ('mse').
Measured on the demo's pruned digits FAR (isaac W8/X8, 2-bit cells, offset mapping, flip,
5-bit ADC, float 97.78 %): sign-magnitude inputs 98.33 % with 'mse' against 97.78 % at the
default percentile; bipolar 98.33 % against 88.33 %; offset 81.94 % against 53.6 %."""
SIGNED_INPUTS = "sign_magnitude"
"""The input encoding that policy takes offset inputs to (unless the user names one): an
offset input puts a constant half-range term into every partial sum, which a coarse ADC
quantizes and the zero-point correction amplifies. Measured on the demo's pruned digits FAR
(isaac, W8/X8, 2-bit cells, 5-bit ADC, float 97.78 %): per-slice policy with offset inputs
53.6 %, with sign-magnitude inputs 97.78 %, with bipolar inputs (a signed 5-bit ADC) 88.3 %;
the old full-range default 10 % (docs/numerics.md); with the 'mse' statistic now the
default, 98.33 % (sign-magnitude and bipolar alike) against 81.94 % (offset)."""


def lossy_adc_default(base: Target, chosen: Target, given: Any) -> tuple[Target, str | None]:
    """`chosen` (the base target with a user's overrides `given`, dotted keys) with the
    calibrated per-slice ADC policy (and sign-magnitude inputs in place of offset ones) when
    the overrides made a lossless full-range ADC lossy and the user chose no ADC policy key;
    and the one line saying so (None when nothing changed). A target file that states a
    lossy full range is left as it says; an input encoding the user names is kept."""
    lossy_now = chosen.adc.range == "full" and not chosen.xbar.full_range_lossless
    was_fine = base.adc.range != "full" or base.xbar.full_range_lossless
    if not (lossy_now and was_fine) or any(k in given for k in ADC_POLICY_KEYS):
        return chosen, None
    policy = dict(LOSSY_ADC_POLICY)
    if chosen.quant.input_encoding == "offset" and "quant.input_encoding" not in given:
        policy["quant.input_encoding"] = SIGNED_INPUTS
    picked = chosen.with_overrides(**policy)
    need = math.ceil(math.log2(chosen.xbar.pmax + 1))
    words = ", ".join(f"{k.split('.')[1]}={v}" for k, v in policy.items())
    note = (f"a {chosen.adc.bits}-bit ADC cannot resolve partial sums up to "
            f"{chosen.xbar.pmax} (lossless needs {need} bits): using the calibrated per-slice "
            f"ADC policy ({words}); --adc-range full "
            "keeps a full-range ADC")
    return picked, note


def _plain(value: Any) -> Any:
    """A policy member as its TOML string; any other value as it is."""
    return str(value) if isinstance(value, StrEnum) else value


def _check_type(value: Any, want: type, section: str, key: str, source: str) -> None:
    ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise ConfigError(f"{source}: [{section}] {key} = {value!r} must be {want.__name__}")


def _check_chip(t: Target, source: str) -> None:
    def bad(key: str, value: Any, rule: str) -> ConfigError:
        return ConfigError(f"{source}: [chip] {key} = {value!r} {rule}")

    for key in ("tiles", "imas_per_tile", "crossbars_per_ima"):
        if getattr(t.chip, key) < 1:
            raise bad(key, getattr(t.chip, key), "must be >= 1")
    if t.chip.crossbars > MAX_CROSSBARS:
        raise bad("tiles", t.chip.tiles, f"gives {t.chip.crossbars:,} crossbars, over "
                  f"the limit of {MAX_CROSSBARS:,}")
    for sec, key, allowed in (("interconnect", "topology", TOPOLOGIES),
                              ("energy", "adc_law", ADC_LAWS)):
        value = getattr(getattr(t, sec), key)
        if value not in allowed:
            raise ConfigError(f"{source}: [{sec}] {key} = {value!r} must be one of "
                              f"{', '.join(map(repr, allowed))}")


def _check_costs(t: Target, source: str) -> None:
    rule = limit_violation(AdcSection, "bits", t.energy.adc_reference_bits)  # an ADC's range
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
