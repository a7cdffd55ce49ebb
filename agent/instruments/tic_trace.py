"""Takeuchi information criterion, trace approximation (Thomas et al. 2019)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from typing_extensions import override

from glasscockpit.agent.instruments.base import (
    Cost,
    Guarded,
    Instrument,
    Leaf,
    Reading,
    total,
)
from glasscockpit.agent.instruments.tic_diag import Curvature, TICCurvature
from glasscockpit.agent.lifecycle.needs import Need
from glasscockpit.agent.lifecycle.schedules import Schedule
from glasscockpit.agent.lifecycle.step import StepView
from glasscockpit.protocol import Kind, PanelSpec


class TICTrace(Instrument):
    """``(Σ_n ‖g_n‖² / B) / (tr h + ε)`` with ``h`` an exact curvature diagonal.

    ``h`` as in ``TICDiag``: the GGN diagonal, or with ``curvature="hessian"``
    the Hessian diagonal (``TICCurvature``).

    Args:
        epsilon: regulariser of ``tr h``; with ``relative=True`` (default) scaled
            by ``Σ_j |h_j|``. ``relative=False, epsilon=1e-7`` is Cockpit's.
        curvature: "ggn" (default) or "hessian".
    """

    name = "tic_trace"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.SUM_GRAD_SQUARED, Need.DIAG_GGN})
    cost = Cost.EXPENSIVE
    kind = Kind.PER_LAYER
    panel = PanelSpec(
        title="TIC (trace)",
        y_label="TIC",
        log_y=True,
        group="curvature",
        help="Trace version of the TIC: mean squared per-sample gradient norm over "
        "the curvature's trace.",
    )

    def __init__(
        self,
        schedule: Schedule | None = None,
        label: str | None = None,
        *,
        epsilon: float = 1e-7,
        relative: bool = True,
        curvature: Curvature = "ggn",
    ) -> None:
        super().__init__(schedule, label)
        self.epsilon, self.relative = epsilon, relative
        self.curvature = TICCurvature(curvature)

    @override
    def on_model(self, model: nn.Module) -> None:
        self.needs = self.curvature.needs_for(model, type(self).needs)  # type: ignore[misc]

    def _ratio(
        self, num: torch.Tensor, tr: torch.Tensor, abs_tr: torch.Tensor
    ) -> Guarded:
        eps = (
            self.epsilon * abs_tr
            if self.relative
            else torch.full_like(tr, self.epsilon)
        )
        return Guarded.of(num / (tr + eps), eps > 0)

    @override
    def compute(self, step: StepView) -> Reading:
        """Returns {"total": TIC, name: TIC of that parameter alone}."""
        b, h = step.sample_count(), self.curvature.diagonal(step)
        num = {
            n: v.double().sum() / b
            for n, v in step.sum_grad_squared().items()
            if n in h
        }
        if not num:
            return None
        tr = {n: h[n].double().sum() for n in num}
        abs_tr = {n: h[n].double().abs().sum() for n in num}
        out: dict[str, Leaf] = {
            "total": self._ratio(
                total(num.values()), total(tr.values()), total(abs_tr.values())
            )
        }
        out.update({n: self._ratio(num[n], tr[n], abs_tr[n]) for n in num})
        return out
