"""Plateau: after many steps the loss has not left its starting level."""

from __future__ import annotations

from glasscockpit.diagnosis.base import Finding, Rule, Thresholds
from glasscockpit.diagnosis.history import History, median


class Plateau(Rule):
    """Median of the newest ``window`` losses ≥ (1 − ``min_gain``) × the start level."""

    name = "plateau"
    title = "Plateau: no progress since the start"
    severity = "warning"
    needs = ("loss",)
    thresholds = {"min_steps": 100.0, "window": 20.0, "min_gain": 0.05}
    explanation = (
        "After `min_steps` loss readings the median of the newest `window` is "
        "within `min_gain` of the level the run started from: training has made "
        "no measurable gain. The loss curve of a run that learns falls clearly in "
        "its first hundred steps; a flat one means the gradient does not reach "
        "the weights (dead units, vanishing gradients), the steps are too small, "
        "or the labels carry no signal the model can use."
    )
    remedies = (
        "Look at the other diagnoses and the gradient norms per layer.",
        "Raise the learning rate; check the initialisation.",
        "Check that inputs and labels match (a shuffled-label bug).",
    )
    source = "loss-progress criterion (AutoTrainer/BTTackler-style loss-change rule)"

    def check(self, h: History, th: Thresholds) -> Finding | None:
        """Compare the newest median loss with the first readings' median."""
        s = h.series("loss")
        n = int(th["window"])
        if s.count < th["min_steps"] or len(s) < n:
            return None
        start, now = median(s.head), median(s.tail(n))
        if not start > 0 or now < (1.0 - th["min_gain"]) * start:
            return None
        return Finding(
            s.last_step,
            {"loss": now, "start_loss": start, "gain": 1.0 - now / start},
            summary=f"loss {now:.3g} vs {start:.3g} at the start after "
            f"{s.count} readings",
            since=s.tail_steps(n)[0],
        )
