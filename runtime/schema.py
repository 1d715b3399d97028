"""The crossbar schema: the [crossbar] [dac] [adc] [quant] sections, typed once.

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
import textwrap
from dataclasses import MISSING, asdict, dataclass, fields
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
    """With range = 'calibrated': cover the largest partial sum seen ('max') or the
    `percentile` of them ('percentile'; larger sums clip, counted at compile time)."""
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
