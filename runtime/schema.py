"""The crossbar schema: the [crossbar] [dac] [adc] [quant] [device] sections, typed once.

A target file, a program layer and the CLI all describe a crossbar with these frozen
dataclasses, parsed by one constructor (`parse_section`) with the same unknown-key
suggestions and the same limits, whichever the source:
- `farc.targets.Target` composes them beside its cost sections (targets/);
- every crossbar layer of a tile program records the sections it was packed with (so one
  layer can differ from another: per-layer precision), and the emulator, the validator and
  the cost model read that record;
- `farc compile/finetune/sweep` generate their override options from the fields (name,
  type, enum choices, the docstring under each field as help).

Policies are string enums (`StrEnum`): TOML and JSON keep plain strings, code compares
members. Their arithmetic lives in runtime/numerics.py, keyed by the member, so a new policy
is a member here plus its arithmetic there.

Standard library only, like the format it describes: a program is read where neither numpy
nor the compiler is needed to understand it.
"""

from __future__ import annotations

import ast
import difflib
import functools
import inspect
import itertools
import math
import textwrap
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, fields, replace
from enum import StrEnum
from typing import Any, ClassVar, get_type_hints

from farc.errors import ConfigError


# ---------------------------------------------------------------- policies
class WeightMapping(StrEnum):
    """How a signed weight sits in conductances."""

    DIFFERENTIAL = "differential"
    """A G+/G- column pair per weight slice; the sign bit is not stored."""
    OFFSET = "offset"
    """One column per slice holding q + Qw; the offset removed digitally."""


class InputEncoding(StrEnum):
    """How a signed input reaches the rows (docs/numerics.md, "Input encodings")."""

    OFFSET = "offset"
    """u = x + 2**(B-1) on the DAC, zero point removed digitally. ISAAC-faithful but
    fragile on a real chip: every device error is multiplied by x + z, and half the rows are
    driven on every cycle."""
    SIGN_MAGNITUDE = "sign_magnitude"
    """|x| in two phases (rows with positive inputs, then rows with negative inputs; the
    second phase subtracted): twice the cycles of B-1 magnitude bits, unsigned ADC."""
    BIPOLAR = "bipolar"
    """|x| in one phase, each row's pulses carrying the sign of its input (positive or
    negative read voltages): the B-1 magnitude bits' cycles, partial sums of either sign,
    a signed ADC (a sign bit and adc.bits - 1 magnitude bits). The encoding IBM aihwkit and
    Sandia CrossSim assume."""


class AdcRange(StrEnum):
    FULL = "full"
    """The ADC spans the largest possible partial sum."""
    CALIBRATED = "calibrated"
    """The compiler sets each range from the partial sums seen on calibration inputs."""


class AdcGranularity(StrEnum):
    TILE = "tile"
    """One ADC range per (layer, row tile)."""
    SLICE = "slice"
    """One per (layer, row tile, weight slice): the low slices' wide sums do not set the
    step of the top slice, whose sums are small and weigh most."""


class StepRule(StrEnum):
    POW2 = "pow2"
    """A power-of-two step (a shift in the periphery)."""
    UNIFORM = "uniform"
    """Any multiple of 1/256 >= 1: the tightest step for the range (a multiplier)."""


class AdcStatistic(StrEnum):
    MAX = "max"
    """A calibrated range covers the largest partial sum seen."""
    PERCENTILE = "percentile"
    """It covers the `percentile` of them; larger sums clip (counted at compile time)."""
    MSE = "mse"
    """It covers the clip point, among a fixed set, whose ADC output has the least squared
    error on the sums seen (rounding and clipping together; docs/numerics.md)."""


class Calibration(StrEnum):
    MAX = "max"
    """An input scale covers max |x| of the calibration data."""
    PERCENTILE = "percentile"
    """It covers the `percentile` of |x|; larger inputs clip."""


DEFAULT_PERCENTILE = 99.99
"""The one default percentile of calibrated ranges, input scales and ADC ranges alike."""


def _limits(lo: float, hi: float, *, pow2: bool = False, open_lo: bool = False) -> dict:
    return {"limits": (lo, hi, pow2, open_lo)}


# ---------------------------------------------------------------- the sections
@dataclass(frozen=True)
class CrossbarSection:
    """[crossbar]: the array itself."""

    rows: int = 128
    """Word lines per crossbar (inputs). Power of two, 8..4096."""
    cols: int = 128
    """Bit lines per crossbar (physical columns). Power of two, 8..4096."""
    cell_bits: int = 2
    """Bits stored per ReRAM cell (conductance levels = 2**cell_bits). 1..8."""

    LIMITS: ClassVar[dict] = {"rows": _limits(8, 4096, pow2=True),
                              "cols": _limits(8, 4096, pow2=True), "cell_bits": _limits(1, 8)}


@dataclass(frozen=True)
class DacSection:
    """[dac]: the input drivers."""

    bits: int = 1
    """Input bits applied per cycle (1 = bit-serial). 1..8."""

    LIMITS: ClassVar[dict] = {"bits": _limits(1, 8)}


@dataclass(frozen=True)
class AdcSection:
    """[adc]: the converters and the policy that sets their ranges."""

    bits: int = 8
    """ADC resolution in bits. 1..16."""
    range: AdcRange = AdcRange.FULL
    """'full': the ADC spans the largest possible partial sum (rows * (2**dac_bits-1) *
    (2**cell_bits-1)); 'calibrated': the compiler sets each crossbar's range from the
    partial sums seen on calibration inputs."""
    columns_per_adc: int = 128
    """Columns that share one ADC (time-multiplexed); bounds column throughput."""
    flip: bool = False
    """ISAAC's flip encoding (ISCA 2016 Sec. 5.2): a column whose levels sum above half the
    maximum is stored complemented and recovered digitally, so partial sums never exceed
    half the full range and the ADC needs one bit fewer."""
    granularity: AdcGranularity = AdcGranularity.TILE
    """'tile': one ADC range per (layer, row tile); 'slice': one per (layer, row tile,
    weight slice), so the low slices' wide sums do not set the step of the top slice,
    whose sums are small and weigh most."""
    step_rule: StepRule = StepRule.POW2
    """'pow2': the step is a power of two (a shift); 'uniform': any multiple of 1/256 >= 1,
    the tightest step for the range (a multiplier in the periphery)."""
    statistic: AdcStatistic = AdcStatistic.MAX
    """With range = 'calibrated': cover the largest partial sum seen ('max'), the
    `percentile` of them ('percentile'; larger sums clip, counted at compile time) or the
    clip point with the least squared ADC error on them ('mse')."""
    percentile: float = DEFAULT_PERCENTILE
    """Percentile of the calibration partial sums a 'percentile' range covers, (50, 100]."""

    LIMITS: ClassVar[dict] = {"bits": _limits(1, 16), "columns_per_adc": _limits(1, 1 << 20),
                              "percentile": _limits(50, 100, open_lo=True)}


@dataclass(frozen=True)
class QuantSection:
    """[quant]: integer weights and inputs."""

    weight_bits: int = 8
    """Signed weight bits incl. sign: q in [-(2**(B-1)-1), 2**(B-1)-1], per output column."""
    input_bits: int = 8
    """Signed input bits incl. sign, per-tensor calibrated scale."""
    mapping: WeightMapping = WeightMapping.DIFFERENTIAL
    """'differential': G+/G- column pair per weight slice; 'offset': one column per slice
    holding q + 2**(B-1)-1, the offset removed digitally."""
    calibration: Calibration = Calibration.MAX
    """Input-range calibration policy: 'max' or 'percentile'."""
    input_encoding: InputEncoding = InputEncoding.OFFSET
    """How signed inputs reach the rows: 'offset' (u = x + 2**(B-1) on the DAC, zero point
    removed digitally), 'sign_magnitude' (|x| in two phases, positive rows then negative
    rows, the second phase subtracted: twice the cycles of B-1 magnitude bits) or 'bipolar'
    (|x| in one phase with signed pulses, a signed ADC: B-1 cycles); docs/numerics.md."""
    percentile: float = DEFAULT_PERCENTILE
    """Percentile of |x| used when calibration = 'percentile', (50, 100]."""

    LIMITS: ClassVar[dict] = {"weight_bits": _limits(2, 16), "input_bits": _limits(2, 16),
                              "percentile": _limits(50, 100, open_lo=True)}


class ProgModel(StrEnum):
    """How programming noise depends on the level (docs/devices.md)."""

    INDEPENDENT = "independent"
    """G + N(0, prog_sigma * (g_on - g_off)), the same at every level (CrossSim
    NormalIndependentDevice)."""
    PROPORTIONAL = "proportional"
    """G (1 + N(0, prog_sigma)), proportional to the cell's conductance (CrossSim
    NormalProportionalDevice)."""
    PCM_JOSHI2020 = "pcm_joshi2020"
    """PCM, sigma per level fitted by Joshi et al. 2020 (aihwkit PCMLikeNoiseModel)."""
    RRAM_WAN2022 = "rram_wan2022"
    """ReRAM, sigma per level fitted by Wan et al. 2022 at 1 s, 1 day or 2 days (aihwkit
    ReRamWan2022NoiseModel)."""


class DriftModel(StrEnum):
    """Where each cell's drift exponent comes from."""

    FIXED = "fixed"
    """N(drift_nu, drift_nu_sigma) for every cell, clipped at 0."""
    PCM_JOSHI2020 = "pcm_joshi2020"
    """Per device from the cell's level, plus PCM's accumulated 1/f read noise."""


class DriftCompensation(StrEnum):
    """How the chip undoes drift from a reference read (docs/devices.md)."""

    OFF = "off"
    """No compensation."""
    GLOBAL = "global"
    """One gain per layer and replica: the ratio of a reference read's summed column
    currents at t0 and at t."""
    PER_COLUMN = "per_column"
    """That ratio per crossbar column, each reference read taken less a zero-input read
    (aihwkit PerColumnDriftCompensation)."""


LEGACY_COMPENSATION = {0.0: DriftCompensation.OFF, 1.0: DriftCompensation.GLOBAL,
                       2.0: DriftCompensation.PER_COLUMN}
"""The numeric codes drift_compensation took before it was an enum (0, 1, 2): still read."""


@dataclass(frozen=True)
class DeviceSection:
    """[device]: the devices' and the periphery's non-idealities (all zero / infinite =
    the ideal chip). A target file names a preset of runtime/devices.py (`preset = NAME`)
    and overrides its fields; the CLI's --device-model and --noise KEY=VALUE do the same.
    The models and their units: docs/devices.md, docs/emulator.md."""

    prog_sigma: float = 0.0
    """Programming variation of the `independent` and `proportional` models: the std of a
    Gaussian drawn once per cell, as a fraction of g_on - g_off (0.02 = 2 %; independent) or
    of the cell's own conductance (proportional)."""
    read_sigma: float = 0.0
    """Read noise: std of an independent Gaussian per cell and per read (per DAC cycle), as
    a fraction of g_on - g_off."""
    sa0_rate: float = 0.0
    """Fraction of cells stuck at g_off (level 0), independent of the programmed level."""
    sa1_rate: float = 0.0
    """Fraction of cells stuck at g_on (the top level)."""
    on_off_ratio: float = math.inf
    """g_on / g_off; finite values make level 0 conduct g_off = g_on / ratio (not 0)."""
    drift_nu: float = 0.0
    """Drift exponent: G(t) = G(t0) * (t / t0) ** -nu."""
    drift_t: float = 1.0
    """Seconds since programming at which the crossbars are read. The rram_wan2022 model
    reads its spread at this time (one of its fitted times)."""
    drift_t0: float = 1.0
    """Reference time of the programmed conductances, seconds."""
    drift_nu_sigma: float = 0.0
    """Device-to-device spread of the drift exponent: each cell drifts with its own
    nu ~ N(drift_nu, drift_nu_sigma), clipped at 0 (as in PCM/ReRAM drift models, e.g.
    aihwkit's). With one nu for every cell, drift is a pure gain that compensation undoes."""
    drift_compensation: DriftCompensation = DriftCompensation.OFF
    """'off'; 'global': right after programming (t0) the chip reads a reference input
    (every used row driven) and stores the summed column currents per layer; at drift_t it
    reads it again and applies the gain sum(t0) / sum(t) to that layer's reads (in the
    analog domain, like a read-voltage or integration-time trim, so read noise is not
    amplified); 'per_column' (aihwkit PerColumnDriftCompensation): the same ratio per
    crossbar column, each reference read taken less a zero-input read of the same column,
    so the column's ADC offset does not enter the estimate and its ADC gain cancels in the
    ratio. The old codes 0, 1, 2 are still read."""
    prog_model: ProgModel = ProgModel.INDEPENDENT
    """Programming-noise model. The fitted ones (pcm_joshi2020, rram_wan2022) take their
    sigma per level from runtime/devices.py, times prog_scale."""
    prog_scale: float = 1.0
    """Multiplies the fitted models' sigma (aihwkit's prog_noise_scale)."""
    drift_model: DriftModel = DriftModel.FIXED
    """Drift-exponent model."""
    adc_sigma: float = 0.0
    """ADC noise: std of a Gaussian, in LSB (ADC steps), added to every analog partial sum
    before the ADC rounds; fresh per conversion."""
    adc_offset_sigma: float = 0.0
    """Per-column ADC offset: drawn once per chip, N(0, adc_offset_sigma) LSB per column."""
    adc_gain_sigma: float = 0.0
    """Per-column ADC gain mismatch: drawn once per chip, gain 1 + N(0, adc_gain_sigma)."""

    @property
    def enabled(self) -> bool:
        """True when any model changes a read (a compensation or a time alone does not)."""
        return (self.prog_sigma > 0 or self.read_sigma > 0 or self.sa0_rate > 0
                or self.sa1_rate > 0 or math.isfinite(self.on_off_ratio) or self.drifts
                or self.fitted_prog or self.drift_model != DriftModel.FIXED
                or self.adc_sigma > 0 or self.adc_mismatch)

    @property
    def drifts(self) -> bool:
        """True when the conductances drift between programming and the read."""
        return ((self.drift_nu > 0 or self.drift_model != DriftModel.FIXED)
                and self.drift_t != self.drift_t0)

    @property
    def fitted_prog(self) -> bool:
        """True for a per-level fitted programming model (runtime/devices.py)."""
        return self.prog_model in (ProgModel.PCM_JOSHI2020, ProgModel.RRAM_WAN2022)

    @property
    def adc_mismatch(self) -> bool:
        """True when each chip draws per-column ADC offsets or gains."""
        return self.adc_offset_sigma > 0 or self.adc_gain_sigma > 0

    @property
    def beyond_twin(self) -> list[str]:
        """The enabled models farc/far/crossbar_torch.py (the fine-tuning twin) does not
        draw yet: it takes prog_sigma as `independent`, `fixed` drift, read noise, stuck-at
        cells, on/off ratio and both compensations, nothing else."""
        out = [f"prog_model={self.prog_model}"] if self.prog_model != ProgModel.INDEPENDENT \
            else []
        out += [f"drift_model={self.drift_model}"] if self.drift_model != DriftModel.FIXED \
            else []
        return out + [k for k in ("adc_sigma", "adc_offset_sigma", "adc_gain_sigma")
                      if getattr(self, k) > 0]

    def __post_init__(self) -> None:
        """Enum fields from strings (and drift_compensation from its old codes); every value
        in range; each model's own parameters only where that model reads them."""
        comp = self.drift_compensation
        if isinstance(comp, int | float) and not isinstance(comp, bool):
            if comp not in LEGACY_COMPENSATION:
                raise ConfigError(f"noise drift_compensation = {comp!r} must be one of "
                                  f"{_choices(DriftCompensation)} (or 0, 1, 2)")
            object.__setattr__(self, "drift_compensation", LEGACY_COMPENSATION[comp])
        for name, enum in (("drift_compensation", DriftCompensation), ("prog_model", ProgModel),
                           ("drift_model", DriftModel)):
            value = getattr(self, name)
            if value not in [m.value for m in enum]:
                raise ConfigError(f"noise {name} = {value!r} must be one of {_choices(enum)}")
            object.__setattr__(self, name, enum(value))
        for name in ("prog_sigma", "read_sigma", "drift_nu", "drift_nu_sigma", "prog_scale",
                     "adc_sigma", "adc_offset_sigma", "adc_gain_sigma"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ConfigError(f"noise {name} = {getattr(self, name)!r} must be finite "
                                  "and >= 0")
        for name in ("sa0_rate", "sa1_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"noise {name} = {getattr(self, name)!r} must be in [0, 1]")
        if self.sa0_rate + self.sa1_rate > 1:
            raise ConfigError(f"noise sa0_rate + sa1_rate = {self.sa0_rate + self.sa1_rate} "
                              "exceeds 1")
        if not self.on_off_ratio > 1:
            raise ConfigError(f"noise on_off_ratio = {self.on_off_ratio!r} must be > 1")
        if not (0 < self.drift_t0 <= self.drift_t < math.inf):
            raise ConfigError(f"noise drift_t = {self.drift_t!r} must be >= drift_t0 = "
                              f"{self.drift_t0!r} > 0")
        if self.fitted_prog and self.prog_sigma > 0:
            raise ConfigError(f"noise prog_sigma applies to the independent and proportional "
                              f"models; {self.prog_model} takes its sigma per level (scale it "
                              "with prog_scale)")
        if self.drift_model != DriftModel.FIXED and (self.drift_nu > 0 or
                                                     self.drift_nu_sigma > 0):
            raise ConfigError(f"noise drift_nu and drift_nu_sigma apply to the fixed drift "
                              f"model; {self.drift_model} draws each cell's exponent itself")
        if self.prog_model == ProgModel.RRAM_WAN2022:
            from farc.runtime.devices import check_fitted_time  # numpy: only for this model

            check_fitted_time(self.drift_t)

    @classmethod
    def parse(cls, items: Sequence[str], base: DeviceSection | None = None) -> DeviceSection:
        """From KEY=VALUE strings (the CLI's --noise), e.g. ["read_sigma=0.01"], each over
        `base` (a device preset; ideal when None)."""
        types = field_types(cls)
        kw: dict[str, Any] = {}
        for item in items:
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or key not in types:
                raise ConfigError(f"bad --noise {item!r}: expected KEY=VALUE with KEY one of "
                                  f"{', '.join(types)}")
            if types[key] is not float:
                kw[key] = _number_or_text(value.strip())
                continue
            try:
                kw[key] = float(value)
            except ValueError:
                raise ConfigError(f"bad --noise {item!r}: {value!r} is not a number") from None
        return replace(base if base is not None else cls(), **kw)

    def changed(self) -> dict[str, Any]:
        """The fields that differ from the ideal chip, as a TOML/JSON table (what a program
        records: never the ideal chip's infinite on/off ratio, which JSON cannot hold)."""
        ideal = section_dict(DeviceSection())
        return {k: v for k, v in section_dict(self).items() if v != ideal[k]}


def _choices(enum: type[StrEnum]) -> str:
    return ", ".join(repr(m.value) for m in enum)


def _number_or_text(text: str) -> Any:
    """An enum field's value from the command line: its old numeric code or its name."""
    try:
        return float(text)
    except ValueError:
        return text


XBAR_SECTIONS: dict[str, type] = {"crossbar": CrossbarSection, "dac": DacSection,
                                  "adc": AdcSection, "quant": QuantSection}
"""The sections a crossbar layer is packed with, by their TOML/JSON name."""


# ---------------------------------------------------------------- parsing
def suggest(word: str, choices: list[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or ''."""
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_keys(values: dict, allowed: list[str], section: str, source: str,
               error: type[Exception] = ConfigError) -> None:
    """Refuse a key the section does not have, naming it and the closest known key."""
    for key in values:
        if key not in allowed:
            raise error(f"{source}: unknown key {key!r} in [{section}]{suggest(key, allowed)}")


@functools.cache
def field_types(cls: type) -> dict[str, type]:
    """Field name -> its Python type (int, float, bool, str or a StrEnum)."""
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def limit_violation(cls: type, key: str, value: Any) -> str | None:
    """Why `value` is out of the limits of field `key` of section `cls`, or None."""
    rule = getattr(cls, "LIMITS", {}).get(key)
    if rule is None:
        return None
    lo, hi, pow2, open_lo = rule["limits"]
    if pow2 and not (lo <= value <= hi and int(value) & (int(value) - 1) == 0):
        return f"must be a power of two in {lo}..{hi}"
    if open_lo:
        return None if lo < value <= hi else f"must be in ({lo:g}, {hi:g}]"
    return None if lo <= value <= hi else f"must be in {lo}..{hi}"


def parse_value(cls: type, key: str, value: Any, section: str, source: str,
                error: type[Exception] = ConfigError) -> Any:
    """One field's value checked for type, enum membership and limits; enums become members."""
    want = field_types(cls)[key]

    def bad(rule: str) -> Exception:
        return error(f"{source}: [{section}] {key} = {value!r} {rule}")

    if isinstance(want, type) and issubclass(want, StrEnum):
        if value not in [m.value for m in want]:
            raise bad(f"must be one of {', '.join(repr(m.value) for m in want)}")
        return want(value)
    if want is bool:
        if not isinstance(value, bool):
            raise bad("must be bool")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            (want is int and not isinstance(value, int)):
        raise bad(f"must be {want.__name__}")
    typed = want(value)
    rule = limit_violation(cls, key, typed)
    if rule:
        raise bad(rule)
    return typed


def parse_section(cls: type, values: Any, section: str, source: str,
                  error: type[Exception] = ConfigError) -> Any:
    """A section from its TOML/JSON table: unknown keys refused with a suggestion, every
    value checked, absent keys at their defaults. The one constructor of target files,
    program layers and CLI overrides."""
    if not isinstance(values, dict):
        raise error(f"{source}: [{section}] must be a table, got {values!r}")
    names = [f.name for f in fields(cls)]
    check_keys(values, names, section, source, error)
    return cls(**{k: parse_value(cls, k, v, section, source, error) for k, v in values.items()})


def section_dict(spec: Any) -> dict[str, Any]:
    """A section as its TOML/JSON table (enums as plain strings)."""
    return {k: (str(v) if isinstance(v, StrEnum) else v) for k, v in asdict(spec).items()}


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (unit, range): what `farc targets`,
    docs/targets.md and the generated CLI help show."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in itertools.pairwise(body):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and \
                isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def default_of(cls: type, key: str) -> Any:
    """The default value of a section field."""
    f = next(f for f in fields(cls) if f.name == key)
    return f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
