"""The instrument registry (an explicit tuple) and the presets derived from cost."""

from __future__ import annotations

from glasscockpit.agent.instruments.alpha import Alpha
from glasscockpit.agent.instruments.base import (
    Cost,
    Instrument,
    Reading,
    default_schedule,
)
from glasscockpit.agent.instruments.distance import Distance
from glasscockpit.agent.instruments.grad_norm import GradNorm
from glasscockpit.agent.instruments.hess_max_ev import HessMaxEV
from glasscockpit.agent.instruments.hess_trace import HessTrace
from glasscockpit.agent.instruments.loss import Loss
from glasscockpit.agent.instruments.lr import Lr
from glasscockpit.agent.instruments.time import Time
from glasscockpit.agent.instruments.update_size import UpdateSize

ALL: tuple[type[Instrument], ...] = (
    Loss,
    GradNorm,
    Lr,
    Alpha,
    Distance,
    UpdateSize,
    HessTrace,
    HessMaxEV,
    Time,
)

BY_NAME: dict[str, type[Instrument]] = {cls.name: cls for cls in ALL}

#: Presets, least to most expensive: each includes every instrument up to a cost.
PRESETS: dict[str, tuple[type[Instrument], ...]] = {
    "economy": tuple(c for c in ALL if c.cost <= Cost.CHEAP),
    "business": tuple(c for c in ALL if c.cost <= Cost.MODERATE),
    "full": ALL,
}


def resolve(spec: str | Instrument | type[Instrument]) -> list[Instrument]:
    """Turn a preset name, instrument name, class or instance into instances."""
    if isinstance(spec, Instrument):
        return [spec]
    if isinstance(spec, type) and issubclass(spec, Instrument):
        return [spec()]
    if isinstance(spec, str):
        if spec in PRESETS:
            return [cls() for cls in PRESETS[spec]]
        if spec in BY_NAME:
            return [BY_NAME[spec]()]
        raise ValueError(
            f"Unknown instrument {spec!r}. Available presets: {sorted(PRESETS)}; "
            f"instruments: {sorted(BY_NAME)}"
        )
    raise TypeError(
        f"Expected a preset name, instrument name, class or instance, got {spec!r}"
    )


__all__ = [
    "ALL",
    "Alpha",
    "BY_NAME",
    "PRESETS",
    "Cost",
    "Distance",
    "GradNorm",
    "HessMaxEV",
    "HessTrace",
    "Instrument",
    "Loss",
    "Lr",
    "Reading",
    "Time",
    "UpdateSize",
    "default_schedule",
    "resolve",
]
