"""Divergence: the loss is NaN/Inf, or far above where the run started."""

from __future__ import annotations

import math

from glasscockpit.diagnosis.base import Finding, Rule, Thresholds
from glasscockpit.diagnosis.history import History, median


class Divergence(Rule):
    """Fires at once on a non-finite loss, or on a loss ``blowup`` × its start."""

    name = "divergence"
    title = "Training diverged"
    severity = "critical"
    needs = ("loss",)
    thresholds = {"blowup": 10.0}
    explanation = (
        "The mini-batch loss is NaN or infinite, or more than `blowup` times the "
        "level the run started from: the iterates have left the region where the "
        "model can learn, and every later step is wasted. A model that is ten "
        "times worse than its untrained self has not found a harder part of the "
        "data; its weights or optimizer state have blown up."
    )
    remedies = (
        "Lower the learning rate (and check the warm-up).",
        "Clip the gradient norm.",
        "Look for a log/division of zero or an exp overflow in the loss.",
        "Use a numerically stable loss (cross_entropy on logits, not log(softmax)).",
    )
    source = "non-finite loss; blow-up over the initial loss level"

    def check(self, h: History, th: Thresholds) -> Finding | None:
        """Newest loss non-finite, or above ``blowup`` × the median start level."""
        s = h.series("loss")
        loss = s.last
        if not math.isfinite(loss):
            return Finding(s.last_step, {"loss": loss}, summary=f"loss is {loss}")
        start = median(s.head)
        if len(s.head) >= 3 and start > 0 and loss > th["blowup"] * start:
            return Finding(
                s.last_step,
                {"loss": loss, "start_loss": start, "ratio": loss / start},
                summary=f"loss {loss:.3g} is {loss / start:.0f}× its start {start:.3g}",
            )
        return None
