"""Norm test (Byrd et al. 2012): per-sample gradient variance relative to ‖g‖²."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from typing_extensions import override

from glasscockpit.agent.instruments.base import (
    Cost,
    Guarded,
    Instrument,
    Reading,
    f32_noise,
    split_layers,
    sq_norms,
    stack64,
)
from glasscockpit.agent.lifecycle.needs import Need
from glasscockpit.agent.lifecycle.step import StepView
from glasscockpit.protocol import Kind, PanelSpec


def norm_test(s2: Tensor, g2: Tensor, b: int) -> Guarded:
    """``sqrt((Σ‖g_n‖² − B‖g‖²) / ((B−1)·B‖g‖²))``; undefined for B < 2 or g ≈ 0."""
    var = (s2 - b * g2) / max(b - 1, 1)
    valid = (g2 > f32_noise(s2 / b)) & (b > 1)
    return Guarded.of((var.clamp(min=0) / (b * g2)).sqrt(), valid)


class NormTest(Instrument):
    """The smallest norm-test tolerance θ that the current batch passes."""

    name = "norm_test"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.GRAD, Need.BATCH_L2})
    cost = Cost.MODERATE
    kind = Kind.PER_LAYER
    preset = "economy"
    _names: list[str]
    panel = PanelSpec(
        title="Norm test",
        y_label="θ_norm",
        group="gradients",
        help="Gradient noise relative to the gradient's size; values ≳ 1 mean the "
        "batch is too small for the gradient's direction to be trusted.",
        smooth=True,
        band=(0.0, 1.0),
        card="Gradient tests",
    )

    @override
    def compute(self, step: StepView) -> Reading:
        """Returns {"total": θ, name: θ of that parameter}; None if undefined."""
        sums = self.local(step)
        return None if sums is None else self.reading(step, sums)

    @override
    def local(self, step: StepView) -> dict[str, Tensor] | None:
        """``Σ_n ‖g_n‖²`` of the network and of each parameter, ``[1 + L]``."""
        g2, l2 = sq_norms(step), step.batch_l2()
        self._names = [n for n in l2 if n in g2]
        if not self._names:
            return None
        s2 = stack64([l2[n] for n in self._names]).sum(1)  # [L]
        return {"s2": torch.cat([s2.sum()[None], s2])}

    @override
    def reading(self, step: StepView, sums: dict[str, Tensor]) -> Reading:
        b, g2 = step.sample_count(), sq_norms(step)
        g2s = torch.stack([g2[n] for n in self._names])
        g2s = torch.cat([g2s.sum()[None], g2s])
        return split_layers(norm_test(sums["s2"], g2s, b), self._names)
