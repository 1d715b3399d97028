"""Build a model from its kind and config dict: the one place that maps names to classes."""

from __future__ import annotations

from torch import nn

from farc.errors import CheckpointError
from farc.models.deit import DeiT, DeiTConfig
from farc.models.far import FAR, FARConfig

MODEL_KINDS = ("deit", "far")


def build_model(kind: str, config: dict) -> nn.Module:
    """A freshly initialised model of `kind` ('deit' or 'far') with `config`."""
    try:
        if kind == "deit":
            return DeiT(DeiTConfig(**config))
        if kind == "far":
            return FAR(FARConfig.from_dict(config))
    except (TypeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"bad {kind} config: {exc}") from None
    raise CheckpointError(f"unknown model kind {kind!r}; expected one of {', '.join(MODEL_KINDS)}")


def model_config(model: nn.Module) -> dict:
    """The JSON-able config dict that `build_model` takes back."""
    return model.cfg.to_dict()
