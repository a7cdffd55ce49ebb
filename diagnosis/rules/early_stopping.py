"""Time to stop: the gradient is indistinguishable from noise (Mahsereci et al.)."""

from __future__ import annotations

from glasscockpit.diagnosis.base import Finding, Rule, Thresholds
from glasscockpit.diagnosis.history import History, median, share


class EarlyStoppingEB(Rule):
    """EB criterion > ``eb`` in ``share`` of the newest ``window`` readings."""

    name = "early_stopping"
    title = "Time to stop: no signal left in the gradient"
    severity = "info"
    needs = ("early_stopping",)
    panels = ("early_stopping", "loss")
    thresholds = {"eb": 0.0, "window": 20.0, "share": 0.8}
    explanation = (
        "The evidence-based criterion EB = 1 − (B/D) Σ_j g_j² / σ̂_j² compares each "
        "gradient entry with its per-sample variance; above 0 the mini-batch "
        "gradient is statistically indistinguishable from zero-mean noise "
        "(Mahsereci, Balles, Lassner & Hennig 2017). Further steps follow the "
        "sampling noise of the training set: the point to stop without a "
        "validation set, or to anneal the learning rate."
    )
    remedies = (
        "Stop training (or keep the checkpoint from here).",
        "Anneal the learning rate if the loss is still too high.",
    )
    source = (
        "Mahsereci, Balles, Lassner & Hennig 2017, Early stopping without a "
        "validation set"
    )

    def check(self, h: History, th: Thresholds) -> Finding | None:
        """EB above its threshold in most of the window."""
        s = h.series("early_stopping")
        n = int(th["window"])
        if len(s) < n:
            return None
        vals = s.tail(n)
        if share(vals, lambda v: v > th["eb"]) < th["share"]:
            return None
        return Finding(
            s.last_step,
            {"eb_median": median(vals), "eb": s.last},
            summary=f"EB median {median(vals):.2f} > {th['eb']:g} over {n} readings",
            since=s.tail_steps(n)[0],
        )
