"""Dead units: layers whose gradient is exactly zero while others learn."""

from __future__ import annotations

from glasscockpit.diagnosis.base import Finding, Rule, Thresholds
from glasscockpit.diagnosis.history import History, share


class DeadUnits(Rule):
    """At least ``min_dead`` parameter tensors with ‖g‖ = 0 in ``window`` readings.

    A tensor counts as dead when its gradient was exactly zero in every one of the
    newest ``window`` readings while the network's total gradient was not.
    """

    name = "dead_units"
    title = "Dead units"
    severity = "warning"
    needs = ("grad_norm",)
    layered = ("grad_norm",)
    thresholds = {"window": 5.0, "min_dead": 1.0}
    explanation = (
        "Some parameter tensors get an exactly-zero gradient at every step while "
        "the rest of the network gets a non-zero one. A ReLU unit whose input is "
        "negative for every sample outputs 0 and passes back 0 (a dead ReLU, Lu "
        "et al. 2019); when a whole layer is dead, its weights and every layer "
        "before it stop learning for good, and the loss plateaus. Frozen "
        "parameters look the same: exclude them from the optimizer's tracking "
        "if they are frozen on purpose."
    )
    remedies = (
        "Initialise biases at 0 (or slightly positive) and use Kaiming init.",
        "Lower the learning rate (a too-large step can kill units).",
        "Use LeakyReLU/GELU, or add normalisation before the ReLUs.",
    )
    source = "Lu, Shin, Su & Karniadakis 2019, Dying ReLU and initialization"

    def check(self, h: History, th: Thresholds) -> Finding | None:
        """Layers with exactly-zero ‖g‖ over the window while the total is not."""
        n = int(th["window"])
        total = h.series("grad_norm")
        if len(total) < n or not all(v > 0 for v in total.tail(n)):
            return None
        keys = h.keys("grad_norm")
        dead = [
            k
            for k in keys
            if h.series("grad_norm", k).last == 0.0  # cheap test first
            and len(h.series("grad_norm", k)) >= n
            and share(h.series("grad_norm", k).tail(n), lambda v: v == 0.0) == 1.0
        ]
        if not keys or len(dead) < th["min_dead"]:
            return None
        return Finding(
            total.last_step,
            {"dead_tensors": float(len(dead)), "tensors": float(len(keys))},
            summary=f"{len(dead)} of {len(keys)} tensors get no gradient: "
            + ", ".join(dead[:4])
            + ("…" if len(dead) > 4 else ""),
            since=total.tail_steps(n)[0],
        )
