"""The instrument registry (an explicit tuple) and Cockpit's three presets."""

from __future__ import annotations

from glasscockpit.agent.instruments.alpha import Alpha
from glasscockpit.agent.instruments.base import (
    Cost,
    Guarded,
    Instrument,
    PresetName,
    Reading,
    default_schedule,
)
from glasscockpit.agent.instruments.cabs import CABS
from glasscockpit.agent.instruments.distance import Distance
from glasscockpit.agent.instruments.early_stopping import EarlyStopping
from glasscockpit.agent.instruments.grad_hist_1d import GradHist1d
from glasscockpit.agent.instruments.grad_hist_2d import GradHist2d
from glasscockpit.agent.instruments.grad_norm import GradNorm
from glasscockpit.agent.instruments.hess_max_ev import HessMaxEV
from glasscockpit.agent.instruments.hess_trace import HessTrace
from glasscockpit.agent.instruments.inner_test import InnerTest
from glasscockpit.agent.instruments.loss import Loss
from glasscockpit.agent.instruments.lr import Lr
from glasscockpit.agent.instruments.mean_gsnr import MeanGSNR
from glasscockpit.agent.instruments.norm_test import NormTest
from glasscockpit.agent.instruments.ortho_test import OrthoTest
from glasscockpit.agent.instruments.tic_diag import TICDiag
from glasscockpit.agent.instruments.tic_trace import TICTrace
from glasscockpit.agent.instruments.time import Time
from glasscockpit.agent.instruments.update_size import UpdateSize

ALL: tuple[type[Instrument], ...] = (
    Loss,
    GradNorm,
    Lr,
    NormTest,
    InnerTest,
    OrthoTest,
    MeanGSNR,
    TICDiag,
    TICTrace,
    CABS,
    EarlyStopping,
    GradHist1d,
    GradHist2d,
    Alpha,
    Distance,
    UpdateSize,
    HessTrace,
    HessMaxEV,
    Time,
)

BY_NAME: dict[str, type[Instrument]] = {cls.name: cls for cls in ALL}

#: Preset order: each preset includes every instrument of the earlier ones.
PRESET_ORDER: tuple[PresetName, ...] = ("economy", "business", "full")


def _members(preset: PresetName) -> tuple[type[Instrument], ...]:
    upto = PRESET_ORDER[: PRESET_ORDER.index(preset) + 1]
    return tuple(c for c in ALL if c.preset in upto)


#: Cockpit's configurations, from each instrument's ``preset`` class attribute.
PRESETS: dict[str, tuple[type[Instrument], ...]] = {
    p: _members(p) for p in PRESET_ORDER
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
    "CABS",
    "PRESETS",
    "PRESET_ORDER",
    "Cost",
    "EarlyStopping",
    "GradHist1d",
    "GradHist2d",
    "GradNorm",
    "Guarded",
    "InnerTest",
    "Distance",
    "HessMaxEV",
    "HessTrace",
    "Instrument",
    "Loss",
    "Lr",
    "MeanGSNR",
    "NormTest",
    "OrthoTest",
    "Reading",
    "TICDiag",
    "TICTrace",
    "Time",
    "UpdateSize",
    "default_schedule",
    "resolve",
]
