"""Learning rate too large: α persistently above 1 while the loss rises."""

from __future__ import annotations

import math

from glasscockpit.diagnosis.base import Finding, Rule, Thresholds
from glasscockpit.diagnosis.history import History, loss_trend, median


class LrTooLarge(Rule):
    """Median α of the newest ``window`` readings > ``alpha`` and the loss rising.

    Early in a run fewer readings count (at least ``min_readings``): a blow-up
    does not wait for α's schedule. The loss counts as rising when the median of
    the newest ``loss_window`` losses exceeds the reference (``loss_trend``) by
    ``rise`` × the starting level.
    """

    name = "lr_too_large"
    title = "Learning rate too large"
    severity = "warning"
    needs = ("alpha", "loss")
    thresholds = {
        "alpha": 1.0,
        "window": 3.0,
        "min_readings": 2.0,
        "loss_window": 10.0,
        "rise": 0.1,
    }
    explanation = (
        "α places each step on a parabola fitted to the loss along it: −1 is the "
        "start, 0 the minimum along the step, +1 the point where the loss is back "
        "at its start. Tuned SGD overshoots a little (0 < α < 1), but a median α "
        "above `alpha` means the steps land beyond the far side of the valley: "
        "each one increases the loss along its own direction. Together with a "
        "rising loss this is the Cockpit paper's signature of a learning rate "
        "that is too large; the run is bouncing out of the valley, not into it."
    )
    remedies = (
        "Lower the learning rate (a factor of 3-10), or add warm-up.",
        "Clip the gradient norm.",
        "With a schedule: check that it does not raise the rate here.",
    )
    source = "Schneider, Dangel & Hennig 2021 (Cockpit), the α gauge"

    def check(self, h: History, th: Thresholds) -> Finding | None:
        """α median above the threshold over the window, loss above its reference."""
        a = h.series("alpha")
        n = int(th["window"])
        if len(a) < n and not (len(a) == a.count >= th["min_readings"]):
            return None
        med = median(a.tail(n))
        if not med > th["alpha"]:
            return None
        recent, ref = loss_trend(h, int(th["loss_window"]))
        # A rise is counted against the starting level: near a loss of 0 a few
        # per cent of the current level is noise.
        start = median(h.series("loss").head)
        if not (recent > ref + th["rise"] * max(start, ref) or math.isnan(recent)):
            return None
        return Finding(
            max(a.last_step, h.series("loss").last_step),
            {"alpha_median": med, "loss_recent": recent, "loss_before": ref},
            summary=f"α median {med:.2f} > {th['alpha']:g} over {n} readings; "
            f"loss {ref:.3g} → {recent:.3g}",
            since=a.tail_steps(n)[0],
        )
