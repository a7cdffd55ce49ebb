"""Learning rate too small: steps too short to change the loss, or α near −1."""

from __future__ import annotations

from glasscockpit.diagnosis.base import Finding, Rule, Thresholds
from glasscockpit.diagnosis.history import History, first_order_progress, median


class LrTooSmall(Rule):
    """Median first-order progress ‖g‖·‖d‖/L < ``progress``, or median α ≤ ``alpha``.

    ``‖g‖·‖d‖`` bounds how much a step ``d`` can change the loss to first order
    (Cauchy-Schwarz), so ``‖g‖·‖d‖/L`` bounds the relative loss change per step.
    Runs whose schedule has annealed the rate below ``annealed`` × its peak, and
    steps with an exactly-zero gradient (dead units' domain), are not judged.
    """

    name = "lr_too_small"
    title = "Learning rate too small"
    severity = "warning"
    needs = ("update_size", "grad_norm", "loss")
    panels = ("update_size", "grad_norm", "alpha", "loss")
    thresholds = {"progress": 1e-4, "alpha": -0.8, "window": 10.0, "annealed": 0.1}
    explanation = (
        "The updates are too short to move the loss: the gradient norm times the "
        "update size, ‖g‖·‖d‖, bounds the loss change of a step to first order, "
        "and here it has stayed below `progress` of the loss for `window` "
        "readings, so halving the loss would take more than 1/`progress` steps "
        "even if every step pointed straight downhill. The α gauge tells the "
        "same story where its fit is not drowned in noise: α near −1 means each "
        "step covers a small fraction of the way to the minimum along its own "
        "direction (Cockpit paper). Runs whose schedule has annealed the rate "
        "are expected to slow down and are not reported."
    )
    remedies = (
        "Raise the learning rate (a factor of 3-10) or run a learning-rate range test.",
        "Check that a scheduler did not decay it too early.",
    )
    source = (
        "Schneider, Dangel & Hennig 2021 (Cockpit), α and update size; "
        "first-order bound on the loss change"
    )

    def check(self, h: History, th: Thresholds) -> Finding | None:
        """Relative first-order progress (or α) over the window."""
        n = int(th["window"])
        upd = h.series("update_size")
        lr = h.series("lr")
        if len(lr) and lr.last < th["annealed"] * lr.hi:
            return None  # a schedule annealed the rate: small steps expected
        ev: dict[str, float] = {}
        progress = first_order_progress(h, n)
        if progress is not None:
            ev["progress_median"] = progress
        a = h.series("alpha")
        # α near −1 means "too short" for gradient steps; Adam's preconditioned
        # steps sit there when healthy, so only (plain/heavy-ball) SGD reads it.
        if len(a) >= n // 2 and h.optimizer in ("", "SGD"):
            ev["alpha_median"] = median(a.tail(n // 2))
        slow = ev.get("progress_median", 1.0) < th["progress"]
        short = ev.get("alpha_median", 0.0) <= th["alpha"]
        if not (slow or short):
            return None
        if len(lr):
            ev["lr"] = lr.last
        what = (
            f"‖g‖·‖d‖/L median {ev['progress_median']:.2g} < {th['progress']:g}"
            if slow
            else f"α median {ev['alpha_median']:.2f} ≤ {th['alpha']:g}"
        )
        return Finding(
            max(upd.last_step, a.last_step),
            ev,
            summary=what + f" over {n} readings",
            since=upd.tail_steps(n)[0] if len(upd) else None,
        )
