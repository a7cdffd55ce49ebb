"""Exploding gradients: non-finite or fast-growing gradient norms, per layer."""

from __future__ import annotations

import math

from glasscockpit.diagnosis.base import Finding, Rule, Thresholds
from glasscockpit.diagnosis.history import History, improving, median


class ExplodingGradients(Rule):
    """NaN/Inf in any layer's ‖g‖ (critical), or ‖g‖ grown ``growth`` × recently.

    Growth counts only while the loss is not improving (``improving``).
    """

    name = "exploding_gradients"
    title = "Exploding gradients"
    severity = "warning"
    needs = ("grad_norm",)
    layered = ("grad_norm",)
    thresholds = {
        "growth": 10.0,
        "recent": 5.0,
        "before": 20.0,
        "loss_window": 10.0,
        "gain": 0.05,
    }
    explanation = (
        "The gradient norm is non-finite, or the median of its newest `recent` "
        "readings is more than `growth` times its median over the `before` "
        "readings preceding them, "
        "while the loss has not fallen by `gain` over the last `loss_window` steps "
        "(gradients also grow when a model leaves its initial plateau, but then "
        "the loss falls). "
        "Gradients that grow by an order of magnitude while training runs are the "
        "signature of exploding gradients (Pascanu et al.): each step is larger "
        "than the last, the updates overshoot, and the loss follows a few steps "
        "later. The layer whose gradient grew most is named."
    )
    remedies = (
        "Clip the gradient norm (torch.nn.utils.clip_grad_norm_).",
        "Lower the learning rate.",
        "Add normalisation layers or residual connections; use a scaled init.",
    )
    source = "Pascanu, Mikolov & Bengio 2013, On the difficulty of training RNNs"

    def check(self, h: History, th: Thresholds) -> Finding | None:
        """Non-finite total/layer norms first, then growth of the total norm."""
        total = h.series("grad_norm")
        # ‖g‖ is the root of the layers' squares: a non-finite layer shows in it.
        keys = [] if math.isfinite(total.last) else [*h.keys("grad_norm"), "total"]
        for key in keys:
            s = h.series("grad_norm", key) if key != "total" else total
            if s.last_step == total.last_step and not math.isfinite(s.last):
                return Finding(
                    s.last_step,
                    {"grad_norm": s.last},
                    key=key,
                    summary=f"‖g‖ of {key} is {s.last}",
                    severity="critical",
                )
        n, m = int(th["recent"]), int(th["before"])
        if len(total) < n + 2:
            return None
        vals = total.tail(n + m)
        start = median(vals[:-n])
        now = median(vals[-n:])
        if not start > 0 or not now >= th["growth"] * start:
            return None
        if improving(h, int(th["loss_window"]), th["gain"]):
            return None  # growing while the loss falls: leaving a plateau
        grown = {}
        for k in h.keys("grad_norm"):
            layer = h.series("grad_norm", k).tail(n + m)
            grown[k] = median(layer[-n:]) / max(median(layer[:-n]), 1e-300)
        worst = max(grown, key=lambda k: grown[k], default="")
        ev = {"grad_norm": now, "start_grad_norm": start, "growth": now / start}
        if worst:
            ev["worst_layer_growth"] = grown[worst]
        return Finding(
            total.last_step,
            ev,
            summary=f"‖g‖ {now:.3g} is {now / start:.0f}× its level {start:.3g} "
            f"{m} readings before" + (f"; most in {worst}" if worst else ""),
        )
