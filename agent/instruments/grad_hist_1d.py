"""Histogram of all per-sample gradient elements (B·D values), summed over tensors."""

from __future__ import annotations

from typing import ClassVar

import torch
from typing_extensions import override

from glasscockpit.agent.instruments.base import Cost, Instrument, Reading, count_into
from glasscockpit.agent.needs import Need
from glasscockpit.agent.schedules import Schedule
from glasscockpit.agent.step import StepView
from glasscockpit.protocol import Kind, PanelSpec


class GradHist1d(Instrument):
    """Counts of ``g_n`` entries in ``bins`` equal bins over ``range``.

    Out-of-range values are clamped into the edge bins (as Cockpit does), so the
    counts always add up to ``B·D``.

    Args:
        bins: number of bins (Cockpit: 100).
        range: ``(low, high)`` of the bins (Cockpit: ``(-2, 2)``).
        chunk: per-sample values binned at a time (small enough to stay in cache).
    """

    name = "grad_hist_1d"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.BATCH_GRAD})
    cost = Cost.EXPENSIVE
    kind = Kind.HISTOGRAM
    preset = "economy"
    panel = PanelSpec(
        title="Per-sample gradient elements",
        y_label="count",
        log_y=True,
        group="gradients",
        help="Distribution of every per-sample gradient entry: a spike at 0 warns "
        "of vanishing gradients, full edge bins of exploding ones.",
    )

    def __init__(
        self,
        schedule: Schedule | None = None,
        label: str | None = None,
        *,
        bins: int = 100,
        range: tuple[float, float] = (-2.0, 2.0),  # noqa: A002 - numpy's name
        chunk: int = 2**18,
    ) -> None:
        super().__init__(schedule, label)
        if bins < 1 or not range[0] < range[1]:
            raise ValueError(f"Need bins >= 1 and low < high, got {bins}, {range}")
        self.bins, self.range = bins, (float(range[0]), float(range[1]))
        self.chunk = chunk

    @override
    def compute(self, step: StepView) -> Reading:
        """Returns {"counts": [bins], "edges": [bins + 1], "nan": NaN entries}.

        NaN entries are not binned (Cockpit bins them into arbitrary bins).
        """
        lo, hi, n = *self.range, self.bins
        counts: torch.Tensor | None = None
        for _, _, g in step.batch_grads(self.chunk):
            if counts is None:  # bin n holds the NaNs
                counts = torch.zeros(n + 1, dtype=torch.int64, device=g.device)
            # torch.histc's bin rule, (x - lo) * n / (hi - lo) truncated, with
            # values beyond the range (and x == hi) in the edge bins; clamp
            # keeps NaN, which nan_to_num_ sends to bin n. In place, and counted
            # through index_put_: several times faster than histc on CPU.
            pos = g.sub_(lo).mul_(n).div_(hi - lo).clamp_(0, n - 0.5)
            count_into(counts, pos.nan_to_num_(nan=n).to(torch.int64))
        if counts is None:
            return None
        edges = torch.linspace(lo, hi, n + 1, dtype=torch.float64)
        return {
            "counts": counts[:n].double(),
            "edges": edges.to(counts.device),
            "nan": counts[n].double(),
        }
