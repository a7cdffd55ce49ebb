"""Takeuchi information criterion, diagonal approximation (Thomas et al. 2019)."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import Tensor, nn
from typing_extensions import override

from glasscockpit.agent.engine import EngineError
from glasscockpit.agent.engine.piecewise import not_piecewise_linear
from glasscockpit.agent.instruments.base import Cost, Guarded, Instrument, Leaf, Reading
from glasscockpit.agent.lifecycle.needs import Need
from glasscockpit.agent.lifecycle.schedules import Schedule
from glasscockpit.agent.lifecycle.step import StepView
from glasscockpit.protocol import Kind, PanelSpec

Curvature = Literal["ggn", "hessian", "diag_ggn_exact", "diag_h"]
#: Cockpit's names for the same diagonals.
_ALIASES = {"diag_ggn_exact": "ggn", "diag_h": "hessian"}


class TICCurvature:
    """The diagonal ``h`` a TIC instrument divides by, chosen by ``curvature``.

    ``"ggn"`` (default; Cockpit's ``"diag_ggn_exact"``): the exact GGN diagonal
    from the hook engine, positive semi-definite, for any model the engine
    covers. ``"hessian"`` (Cockpit's default ``"diag_h"``): the exact Hessian
    diagonal; the GGN diagonal where the two are equal (piecewise-linear
    ``nn.Sequential`` models), else BackPACK's ``DiagHessian`` (the model and
    the loss module ``backpack.extend``-ed before the forward pass, every layer
    second-order supported), computed before the user's backward. Its entries
    can be negative (terms of either sign).
    """

    def __init__(self, curvature: Curvature) -> None:
        chosen = _ALIASES.get(curvature, curvature)
        if chosen not in ("ggn", "hessian"):
            raise ValueError(
                "TIC curvature must be 'ggn' (Cockpit's 'diag_ggn_exact') or "
                f"'hessian' (Cockpit's 'diag_h'), got {curvature!r}; the "
                "Monte-Carlo GGN is used only where the exact one needs more than "
                "MAX_PASSES backward passes"
            )
        self.curvature = chosen
        #: True when ``h`` comes from BackPACK (set by ``needs_for``).
        self.backpack = False

    def needs_for(self, model: nn.Module, needs: frozenset[Need]) -> frozenset[Need]:
        """The instrument's needs for this model."""
        self.backpack = self.curvature == "hessian" and bool(
            not_piecewise_linear(model)
        )
        if self.backpack:
            return (needs - {Need.DIAG_GGN}) | {Need.DIAG_HESSIAN}
        return needs

    def diagonal(self, step: StepView) -> dict[str, Tensor]:
        """``h`` per tracked parameter name."""
        if not self.backpack:
            return step.diag_ggn()
        diag = step.diag_hessian()
        if diag is None:
            raise EngineError(
                "curvature='hessian' on a model that is not piecewise linear needs "
                "BackPACK's DiagHessian: backpack.extend the model and the loss "
                "module before the forward pass (every layer second-order "
                "supported), or use curvature='ggn'"
            )
        return {n: d for (n, _), d in zip(step.params, diag, strict=True)}


class TICDiag(Instrument):
    """``Σ_j (Σ_n g_nj² / B) / (h_j + ε)`` with ``h`` an exact curvature diagonal.

    By default ``h`` is the exact GGN diagonal: for ReLU/max-pool networks (any
    supported loss) it equals Cockpit's default Hessian diagonal; elsewhere it is
    its positive semi-definite counterpart (Cockpit's
    ``curvature="diag_ggn_exact"``). ``curvature="hessian"`` reads the Hessian
    diagonal as Cockpit does (``TICCurvature``).

    Args:
        epsilon: regulariser of ``h``; with ``relative=True`` (default) scaled by
            ``mean_j |h_j|``. ``relative=False, epsilon=1e-7`` is Cockpit's.
        curvature: "ggn" (default) or "hessian".
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
        curvature: Curvature = "ggn",
    ) -> None:
        super().__init__(schedule, label)
        self.epsilon, self.relative = epsilon, relative
        self.curvature = TICCurvature(curvature)

    @override
    def on_model(self, model: nn.Module) -> None:
        self.needs = self.curvature.needs_for(model, type(self).needs)  # type: ignore[misc]

    @override
    def compute(self, step: StepView) -> Reading:
        """Returns {"total": TIC, name: that parameter's terms summed}."""
        b, h = step.sample_count(), self.curvature.diagonal(step)
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
