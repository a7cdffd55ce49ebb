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
        b, g2 = step.sample_count(), sq_norms(step)
        l2 = step.batch_l2()
        names = [n for n in l2 if n in g2]
        if not names:
            return None
        s2 = stack64([l2[n] for n in names]).sum(1)  # [L]
        g2s = torch.stack([g2[n] for n in names])
        s2, g2s = torch.cat([s2.sum()[None], s2]), torch.cat([g2s.sum()[None], g2s])
        return split_layers(norm_test(s2, g2s, b), names)
