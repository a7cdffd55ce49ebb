"""Wall-clock time when a step's backward pass finished (Cockpit's Time)."""

from __future__ import annotations

import time as _time
from typing import ClassVar

import torch
from typing_extensions import override

from glasscockpit.agent.instruments.base import Cost, Instrument, Reading
from glasscockpit.agent.lifecycle.needs import Need
from glasscockpit.agent.lifecycle.step import StepView
from glasscockpit.protocol import Kind, PanelSpec


class Time(Instrument):
    """Unix time after backward; CUDA work is awaited first, so it is not early."""

    name = "time"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.PARAMS})
    cost = Cost.CHEAP
    kind = Kind.SCALAR
    panel = PanelSpec(
        title="Time",
        y_label="Unix time (s)",
        group="performance",
        help="Wall-clock time after each tracked backward pass; its slope is the "
        "time per step, so bends show slow-downs (data loading, monitoring).",
    )

    @override
    def compute(self, step: StepView) -> Reading:
        """Returns seconds since the epoch as a float."""
        devices = {p.device for _, p in step.param_data() if p.device.type == "cuda"}
        for device in devices:
            # Asynchronous kernels would otherwise make the reading too early.
            torch.cuda.synchronize(device)
        return _time.time()
