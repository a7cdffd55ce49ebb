"""Joint histogram of per-sample gradient elements and their parameter values."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from typing_extensions import override

from glasscockpit.agent.instruments.base import Cost, Instrument, Reading, count_into
from glasscockpit.agent.needs import Need
from glasscockpit.agent.schedules import Schedule
from glasscockpit.agent.step import StepView
from glasscockpit.protocol import Kind, PanelSpec


def _bin_(x: Tensor, n: int, lo: float, hi: float, nan: int) -> Tensor:
    """Bin index (int64), overwriting ``x``; NaN gets index ``nan``.

    Values are clamped to the edge bins' centres (Cockpit's rule), so
    ``floor((x - lo) / w)`` needs no upper check; clamping keeps NaN.
    """
    w = (hi - lo) / n
    pos = x.clamp_(lo + w / 2, hi - w / 2).sub_(lo).div_(w)
    return pos.nan_to_num_(nan=nan).to(torch.int64)


class GradHist2d(Instrument):
    """Counts of pairs ``(g_nk, θ_k)`` over all samples ``n`` and entries ``k``.

    Args:
        bins: ``(gradient bins, parameter bins)`` (Cockpit: ``(40, 50)``).
        range: ``((g low, g high), (θ low, θ high))`` (Cockpit: ``((-1, 1), (-2, 2))``).
        chunk: per-sample values binned at a time (small enough to stay in cache).
    """

    name = "grad_hist_2d"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.BATCH_GRAD})
    cost = Cost.EXPENSIVE
    kind = Kind.HEATMAP
    preset = "full"
    panel = PanelSpec(
        title="Gradient vs parameter",
        y_label="gradient element",
        group="gradients",
        help="Rows: per-sample gradient value, columns: parameter value; e.g. large "
        "gradients only on near-zero weights, or saturated weights with none.",
    )

    def __init__(
        self,
        schedule: Schedule | None = None,
        label: str | None = None,
        *,
        bins: tuple[int, int] = (40, 50),
        range: tuple[tuple[float, float], tuple[float, float]] = (  # noqa: A002
            (-1.0, 1.0),
            (-2.0, 2.0),
        ),
        chunk: int = 2**18,
    ) -> None:
        super().__init__(schedule, label)
        self.bins, self.range, self.chunk = bins, range, chunk

    @override
    def compute(self, step: StepView) -> Reading:
        """Returns {"counts": [g bins, θ bins], "y_edges", "x_edges", "nan"}.

        Pairs with a NaN are not binned; "nan" counts them.
        """
        (ng, nt), ((glo, ghi), (tlo, thi)) = self.bins, self.range
        counts: Tensor | None = None
        for _, theta, g in step.batch_grads(self.chunk):
            # A NaN in g or θ puts the pair at flat index ≥ ng·nt.
            if counts is None:
                counts = torch.zeros(
                    2 * ng * nt + 1, dtype=torch.int64, device=g.device
                )
            theta_bin = _bin_(theta.clone(), nt, tlo, thi, nan=ng * nt)  # broadcasts
            flat = _bin_(g, ng, glo, ghi, nan=ng).mul_(nt).add_(theta_bin)
            count_into(counts, flat)
        if counts is None:
            return None
        dev = counts.device
        return {
            "nan": counts[ng * nt :].sum().double(),
            "counts": counts[: ng * nt].double().reshape(ng, nt),
            "y_edges": torch.linspace(
                glo, ghi, ng + 1, dtype=torch.float64, device=dev
            ),
            "x_edges": torch.linspace(
                tlo, thi, nt + 1, dtype=torch.float64, device=dev
            ),
        }
