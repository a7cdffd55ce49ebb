"""Inner-product test (Bollapragada et al. 2017), O(B·D) without a Gram matrix."""

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


def inner_test(su2: Tensor, msq: Tensor, g2: Tensor, b: int) -> Guarded:
    """``sqrt((Σu_n² − B‖g‖⁴) / ((B−1)·B‖g‖⁴))``, ``u_n = g_n·g``.

    Elementwise in ``su2 = Σu_n²``, ``msq = mean u_n²`` and ``g2 = ‖g‖²``.
    """
    var = (su2 - b * g2.square()) / max(b - 1, 1)
    valid = (g2.square() > f32_noise(msq)) & (b > 1)
    return Guarded.of((var.clamp(min=0) / (b * g2.square())).sqrt(), valid)


class InnerTest(Instrument):
    """The smallest inner-product-test tolerance θ that the current batch passes."""

    name = "inner_test"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.GRAD, Need.BATCH_DOT})
    cost = Cost.MODERATE
    kind = Kind.PER_LAYER
    preset = "economy"
    _names: list[str]
    panel = PanelSpec(
        title="Inner-product test",
        y_label="θ_inner",
        group="gradients",
        help="Noise of the per-sample gradients along the mean gradient; values ≳ 1 "
        "mean many samples point against the step.",
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
        """``Σ_n u_n²`` of the network and of each parameter, ``[1 + L]``."""
        g2, dots = sq_norms(step), step.batch_dot()
        self._names = [n for n in dots if n in g2]
        if not self._names:
            return None
        u = stack64([dots[n] for n in self._names])  # [L, B]
        sq = torch.cat([u.sum(0)[None], u]).square()  # the network's u_n first
        return {"su2": sq.sum(1)}

    @override
    def reading(self, step: StepView, sums: dict[str, Tensor]) -> Reading:
        b, g2 = step.sample_count(), sq_norms(step)
        g2s = torch.stack([g2[n] for n in self._names])
        g2s = torch.cat([g2s.sum()[None], g2s])
        su2 = sums["su2"]
        return split_layers(inner_test(su2, su2 / b, g2s, b), self._names)
