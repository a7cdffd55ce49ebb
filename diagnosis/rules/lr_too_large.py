"""Learning rate too large: α above 1 with a rising loss, or huge relative steps."""

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

    Or: the median relative update of the newest ``update_window``
    update-size readings ≥ ``relative_update`` while the median of as many
    newest losses is above the first loss (the untrained model's) by ``rise``.
    The relative update is ‖Δθ_t‖/‖θ_t‖ ≥ ‖Δθ_t‖/(‖θ_0‖ + ‖θ_t − θ_0‖)
    (triangle inequality), so the lower bound is read from the update size,
    the distance and the initial norm in the run's metadata
    (``parameter_norm``). It holds for any optimizer, Adam's included, whose α
    and edge of stability say little.
    """

    name = "lr_too_large"
    title = "Learning rate too large"
    severity = "warning"
    needs = ("alpha", "loss")
    panels = ("alpha", "loss", "update_size", "distance")
    thresholds = {
        "alpha": 1.0,
        "window": 3.0,
        "min_readings": 2.0,
        "loss_window": 10.0,
        "rise": 0.1,
        "relative_update": 0.1,
        "update_window": 5.0,
    }
    explanation = (
        "α places each step on a parabola fitted to the loss along it: −1 is the "
        "start, 0 the minimum along the step, +1 the point where the loss is back "
        "at its start. Tuned SGD overshoots a little (0 < α < 1), but a median α "
        "above `alpha` means the steps land beyond the far side of the valley: "
        "each one increases the loss along its own direction. Together with a "
        "rising loss this is the Cockpit paper's signature of a learning rate "
        "that is too large; the run is bouncing out of the valley, not into it. "
        "Independently, the size of a step relative to the weights it changes, "
        "‖Δθ‖/‖θ‖, is about 1e-3 in well-tuned training (a widely used rule of "
        "thumb); a step that changes the weights by `relative_update` (10 %) or "
        "more, step after step, rewrites the network every few steps; when the "
        "loss is then above the untrained model's, the steps are too large, "
        "whatever the optimizer (Adam on an easy task may recover, but only "
        "after its first steps have thrown the weights far away and killed "
        "units)."
    )
    remedies = (
        "Lower the learning rate (a factor of 3-10), or add warm-up.",
        "Clip the gradient norm.",
        "With a schedule: check that it does not raise the rate here.",
    )
    source = (
        "Schneider, Dangel & Hennig 2021 (Cockpit), the α gauge; the update-to-"
        "weight ratio ‖Δθ‖/‖θ‖ ≈ 1e-3 rule of thumb (Karpathy, CS231n)"
    )

    def check(self, h: History, th: Thresholds) -> Finding | None:
        """α above 1 with a rising loss, else the relative update size."""
        return self._alpha(h, th) or self._relative(h, th)

    def _relative(self, h: History, th: Thresholds) -> Finding | None:
        norm0 = h.meta.get("parameter_norm")
        n = int(th["update_window"])
        upd, dist = h.series("update_size"), h.series("distance")
        if not (isinstance(norm0, int | float) and norm0 > 0) or len(upd) < n:
            return None
        moved = dict(zip(dist.tail_steps(2 * n), dist.tail(2 * n), strict=True))
        rel = [
            u / (norm0 + moved[s])
            for s, u in zip(upd.tail_steps(n), upd.tail(n), strict=True)
            if s in moved
        ]
        if len(rel) < n:
            return None  # distance not tracked at these steps: no bound
        med = median(rel)
        if not med >= th["relative_update"]:
            return None
        # Large steps that still lower the loss are aggressive, not broken (Adam
        # at 1e-2 on a small MLP moves its weights ~7 % per step and learns);
        # steps that leave the model worse than untrained are too large.
        loss = h.series("loss")
        first = loss.head[0] if loss.head else math.nan
        recent = median(loss.tail(n))
        if not recent > (1.0 + th["rise"]) * first:
            return None
        return Finding(
            upd.last_step,
            {
                "relative_update": med,
                "parameter_norm_init": float(norm0),
                "loss_recent": recent,
                "loss_first": first,
            },
            summary=f"each step changes the weights by ≥ {med:.1%} of their norm "
            f"(median of {n}; ~0.1 % is usual) and the loss is above the "
            f"untrained model's ({first:.3g} → {recent:.3g})",
            since=upd.tail_steps(n)[0],
        )

    def _alpha(self, h: History, th: Thresholds) -> Finding | None:
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
