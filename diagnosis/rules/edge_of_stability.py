"""Edge of stability: λ_max · η at or above the stability limit of (heavy-ball) SGD."""

from __future__ import annotations

from glasscockpit.diagnosis.base import Finding, Rule, Thresholds
from glasscockpit.diagnosis.history import History, improving, median


class EdgeOfStability(Rule):
    """Median λ_max (``window`` readings) · η ≥ ``ratio`` × 2(1 + β), SGD momentum β."""

    name = "edge_of_stability"
    title = "At the edge of stability (λ_max · η ≥ 2)"
    severity = "warning"
    needs = ("hess_max_ev", "lr")
    panels = ("hess_max_ev", "lr", "loss")
    thresholds = {"ratio": 1.0, "window": 3.0, "loss_window": 10.0, "gain": 0.05}
    explanation = (
        "On a quadratic, gradient descent with step η is stable along a direction "
        "of curvature λ only while λ·η < 2; heavy-ball momentum β moves the limit "
        "to 2(1 + β). Here the largest Hessian eigenvalue times the learning rate "
        "has reached `ratio` times that limit, so the step overshoots along the "
        "sharpest direction and the loss turns non-monotone (Cohen et al. 2021): "
        "training either self-stabilises at the edge or catapults and diverges. "
        "The rule reports the run once the loss has stopped falling by `gain` "
        "over `loss_window` steps, since runs at the edge can still progress. "
        "The evidence gives how close the run is: λ_max·η against the limit."
    )
    remedies = (
        "Lower the learning rate below 2(1 + β)/λ_max.",
        "Lower the momentum, or add warm-up so sharpness can adapt.",
        "Use an adaptive optimizer (Adam) if oscillations persist.",
    )
    source = "Cohen, Kaur, Li, Kolter & Talwalkar 2021, Edge of Stability"

    def applies(self, h: History) -> str | None:
        """Only plain/heavy-ball SGD has the 2/η limit (Adam's is preconditioned)."""
        opt = h.optimizer
        if opt and opt != "SGD":
            return f"the 2/η limit holds for SGD; this run uses {opt}"
        return None

    def check(self, h: History, th: Thresholds) -> Finding | None:
        """Newest λ_max times the learning rate against 2(1 + β)."""
        ev, lr = h.series("hess_max_ev"), h.series("lr")
        n = int(th["window"])
        early = min(2, n)  # the start of a run: a blow-up does not wait for n
        if not len(lr) or len(ev) < early or (len(ev) < n and ev.count > len(ev)):
            return None
        beta = h.optimizer_default("momentum")
        limit = 2.0 * (1.0 + beta)
        # The mini-batch λ_max is noisy: the median of the newest readings (of
        # fewer at the start of a run, where a blow-up does not wait).
        sharp = median(ev.tail(n)) * lr.last
        if not sharp >= th["ratio"] * limit:
            return None
        if improving(h, int(th["loss_window"]), th["gain"]):
            return None  # Cohen et al.: GD can make progress at the edge
        return Finding(
            ev.last_step,
            {
                "lambda_max": median(ev.tail(n)),
                "lr": lr.last,
                "momentum": beta,
                "lambda_max_times_lr": sharp,
                "limit": limit,
            },
            summary=f"λ_max·η = {sharp:.3g} ≥ {limit:.3g} (2(1+β), β={beta:g})",
        )
