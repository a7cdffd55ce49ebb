"""Batch too small: the gradient tests above their tolerances, persistently."""

from __future__ import annotations

from glasscockpit.diagnosis.base import Finding, Rule, Thresholds
from glasscockpit.diagnosis.history import History, first_order_progress, median


class BatchTooSmall(Rule):
    """Median norm test ≥ ``theta`` over ``window`` readings.

    The statistic is θ² = s²/(B‖g‖²) with the batch gradient g, whose squared
    norm carries the noise s²/B itself: θ ≥ 1 means the unbiased estimate of the
    true gradient's squared norm, ‖g‖² − s²/B, is not positive, i.e. the batch
    shows no signal above its own noise. Reported only when, after
    ``min_steps`` loss readings, the median of the newest ``loss_window`` is
    not ``gain`` below the start level: a run that progresses averages the
    noise over its steps, and late in training the gradient's signal always
    sinks into its noise, which calls for stopping or annealing rather than
    for a bigger batch. Not reported either when the steps are too short to
    move the loss at all (first-order progress below ``short_steps``, the
    learning-rate-too-small case): then the noise is not what stalls the run.
    """

    name = "batch_too_small"
    title = "Batch too small for the gradient's direction"
    severity = "warning"
    needs = ("norm_test", "loss")
    panels = ("norm_test", "inner_test", "ortho_test", "loss")
    thresholds = {
        "theta": 1.0,
        "target_theta": 0.5,
        "window": 5.0,
        "min_steps": 100.0,
        "short_steps": 1e-4,
        "loss_window": 20.0,
        "gain": 0.05,
    }
    explanation = (
        "The norm test (Byrd et al. 2012) asks whether the mini-batch gradient is "
        "close enough to the true one, E‖g_B − ∇L‖² ≤ θ²‖∇L‖²; the inner-product "
        "and orthogonality tests (Bollapragada et al. 2018) ask the same of its "
        "component along and across the gradient. Each statistic is the smallest "
        "tolerance at which its test passes. Here they have stayed above their "
        "tolerances for `window` readings while, after `min_steps` steps, the loss "
        "has not fallen by `gain` below its starting level (a norm "
        "test of 1 or more means the batch gradient is no longer "
        "than its own noise predicts): the batch is too small to give a "
        "trustworthy descent direction, "
        "so steps follow the noise. The norm test also says by how much to grow "
        "the batch for a target tolerance: B · (statistic / `target_theta`)²."
    )
    remedies = (
        "Increase the batch size (the suggestion is in the evidence), or "
        "accumulate gradients over several batches.",
        "Lower the learning rate to average the noise over more steps.",
    )
    source = (
        "Byrd, Chin, Nocedal & Wu 2012 (norm test); Bollapragada, Byrd & Nocedal "
        "2018 (inner-product and orthogonality tests)"
    )

    def check(self, h: History, th: Thresholds) -> Finding | None:
        """Norm test (and inner test if tracked) above their tolerances."""
        n = int(th["window"])
        norm = h.series("norm_test")
        if len(norm) < n:
            return None
        stat = median(norm.tail(n))
        if not stat >= th["theta"]:
            return None
        ev = {"norm_test": stat}
        for name in ("inner_test", "ortho_test"):
            s = h.series(name)
            if len(s) >= n:
                ev[name] = median(s.tail(n))
        loss = h.series("loss")
        if loss.count < th["min_steps"]:
            return None
        start, now = median(loss.head), median(loss.tail(int(th["loss_window"])))
        if not now >= (1.0 - th["gain"]) * start:
            # The run has made progress: SGD averages the noise over steps, and
            # late in training noise dominance is expected, not a batch problem.
            return None
        progress = first_order_progress(h, int(th["window"]))
        if progress is not None and progress < th["short_steps"]:
            return None  # steps too short to move the loss: lr_too_small's case
        # Byrd et al.'s rule: grow B until the test passes at the target tolerance.
        factor = (stat / th["target_theta"]) ** 2
        ev["batch_factor"] = factor
        batch = h.meta.get("batch_size")
        text = f"grow the batch ×{factor:.1f}"
        if isinstance(batch, int | float) and batch > 0:
            ev["batch_size"] = float(batch)
            ev["suggested_batch_size"] = float(round(batch * factor))
            text = f"suggested batch size {round(batch * factor)}"
        return Finding(
            norm.last_step,
            ev,
            summary=f"norm test {stat:.2f} ≥ {th['theta']:g} over {n} readings; "
            + text,
            since=norm.tail_steps(n)[0],
        )
