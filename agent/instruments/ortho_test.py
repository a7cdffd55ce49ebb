"""Orthogonality test (Bollapragada et al. 2017), O(B·D) without a Gram matrix."""

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


def ortho_test(s2: Tensor, su2: Tensor, g2: Tensor, b: int) -> Guarded:
    """``sqrt((Σ‖g_n‖² − Σu_n²/‖g‖²) / ((B−1)·B‖g‖²))``, ``u_n = g_n·g``.

    Elementwise in ``s2 = Σ‖g_n‖²``, ``su2 = Σu_n²`` and ``g2 = ‖g‖²``.
    """
    var = (s2 - su2 / g2) / max(b - 1, 1)
    valid = (g2 > f32_noise(s2 / b)) & (b > 1)
    return Guarded.of((var.clamp(min=0) / (b * g2)).sqrt(), valid)


class OrthoTest(Instrument):
    """The smallest orthogonality-test tolerance ν that the current batch passes."""

    name = "ortho_test"
    needs: ClassVar[frozenset[Need]] = frozenset(
        {Need.GRAD, Need.BATCH_L2, Need.BATCH_DOT}
    )
    cost = Cost.MODERATE
    kind = Kind.PER_LAYER
    preset = "economy"
    _names: list[str]
    panel = PanelSpec(
        title="Orthogonality test",
        y_label="ν",
        group="gradients",
        help="Noise of the per-sample gradients orthogonal to the mean gradient; "
        "values ≳ 1 mean the step's direction is unreliable.",
        smooth=True,
        band=(0.0, 1.0),
        card="Gradient tests",
    )

    @override
    def compute(self, step: StepView) -> Reading:
        """Returns {"total": ν, name: ν of that parameter}; None if undefined."""
        sums = self.local(step)
        return None if sums is None else self.reading(step, sums)

    @override
    def local(self, step: StepView) -> dict[str, Tensor] | None:
        """``Σ_n ‖g_n‖²`` and ``Σ_n u_n²``, the network's then each parameter's."""
        g2, l2, dots = sq_norms(step), step.batch_l2(), step.batch_dot()
        self._names = [n for n in l2 if n in dots and n in g2]
        if not self._names:
            return None
        s2 = stack64([l2[n] for n in self._names]).sum(1)
        u = stack64([dots[n] for n in self._names])  # [L, B]
        su2 = torch.cat([u.sum(0)[None], u]).square().sum(1)  # the network's first
        return {"s2": torch.cat([s2.sum()[None], s2]), "su2": su2}

    @override
    def reading(self, step: StepView, sums: dict[str, Tensor]) -> Reading:
        b, g2 = step.sample_count(), sq_norms(step)
        g2s = torch.stack([g2[n] for n in self._names])
        g2s = torch.cat([g2s.sum()[None], g2s])
        return split_layers(ortho_test(sums["s2"], sums["su2"], g2s, b), self._names)
