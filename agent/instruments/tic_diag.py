"""Takeuchi information criterion, diagonal approximation (Thomas et al. 2019)."""

from __future__ import annotations

from typing import ClassVar

import torch
from typing_extensions import override

from glasscockpit.agent.instruments.base import Cost, Guarded, Instrument, Leaf, Reading
from glasscockpit.agent.needs import Need
from glasscockpit.agent.schedules import Schedule
from glasscockpit.agent.step import StepView
from glasscockpit.protocol import Kind, PanelSpec


class TICDiag(Instrument):
    """``Σ_j (Σ_n g_nj² / B) / (h_j + ε)`` with ``h`` the exact GGN diagonal.

    For ReLU/max-pool networks (any supported loss) the GGN diagonal equals
    Cockpit's default Hessian diagonal; elsewhere it is its positive
    semi-definite counterpart (Cockpit's ``curvature="diag_ggn_exact"``).

    Args:
        epsilon: regulariser of ``h``; with ``relative=True`` (default) scaled by
            ``mean_j |h_j|``. ``relative=False, epsilon=1e-7`` is Cockpit's.
    """

    name = "tic_diag"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.SUM_GRAD_SQUARED, Need.DIAG_GGN})
    cost = Cost.EXPENSIVE
    kind = Kind.PER_LAYER
    preset = "business"
    panel = PanelSpec(
        title="TIC (diagonal)",
        y_label="TIC",
        log_y=True,
        group="curvature",
        help="Gradient noise measured in units of curvature; growth late in "
        "training hints at overfitting (meaningful near a minimum only).",
    )

    def __init__(
        self,
        schedule: Schedule | None = None,
        label: str | None = None,
        *,
        epsilon: float = 1e-7,
        relative: bool = True,
    ) -> None:
        super().__init__(schedule, label)
        self.epsilon, self.relative = epsilon, relative

    @override
    def compute(self, step: StepView) -> Reading:
        """Returns {"total": TIC, name: that parameter's terms summed}."""
        b, h = step.sample_count(), step.diag_ggn()
        sgs = {n: v.double() for n, v in step.sum_grad_squared().items() if n in h}
        if not sgs:
            return None
        eps = torch.tensor(self.epsilon, dtype=torch.float64)
        if self.relative:
            all_h = torch.cat([h[n].double().reshape(-1) for n in sgs])
            eps = eps.to(all_h.device) * all_h.abs().mean()
        terms = {n: (v / b / (h[n].double() + eps)).sum() for n, v in sgs.items()}
        valid = torch.as_tensor(eps > 0)
        out: dict[str, Leaf] = {
            "total": Guarded.of(torch.stack(list(terms.values())).sum(), valid)
        }
        out.update({n: Guarded.of(t, valid) for n, t in terms.items()})
        return out
