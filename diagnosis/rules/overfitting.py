"""Overfitting: the validation loss rises while the training loss falls (Prechelt)."""

from __future__ import annotations

from glasscockpit.diagnosis.base import Finding, Rule, Thresholds
from glasscockpit.diagnosis.history import History


class Overfitting(Rule):
    """Generalisation loss 100 (E_va / min E_va − 1) > ``gl``, train loss falling."""

    name = "overfitting"
    title = "Overfitting: time to stop"
    severity = "warning"
    needs = ("epoch_loss",)
    layered = ("epoch_loss",)
    thresholds = {"gl": 5.0, "min_epochs": 3.0, "strips": 2.0, "min_rise": 0.01}
    explanation = (
        "The validation loss logged with cockpit.log(valid_loss=...) is more than "
        "`gl` % above its best value so far and rose at each of the last `strips` "
        "evaluations (and by at least `min_rise` of the first validation loss: "
        "near a loss of 0 a relative rise is noise), while the training loss "
        "kept falling "
        "(the epoch losses diverge). Prechelt's generalisation-loss criterion "
        "GL_α stops training exactly here: the model is fitting noise in the "
        "training set, and the checkpoint of the best validation loss is the one "
        "to keep."
    )
    remedies = (
        "Stop training and keep the checkpoint with the best validation loss.",
        "Add data or augmentation; add weight decay or dropout.",
        "Use a smaller model.",
    )
    source = "Prechelt 1998, Early stopping — but when? (GL_α and UP_s criteria)"

    def applies(self, h: History) -> str | None:
        """Needs validation losses, which only ``cockpit.log`` sends."""
        if not len(h.series("epoch_loss", "valid")):
            return "needs cockpit.log(step, train_loss=..., valid_loss=...)"
        return None

    def check(self, h: History, th: Thresholds) -> Finding | None:
        """GL of the newest validation loss, train loss below its value at the best."""
        va, tr = h.series("epoch_loss", "valid"), h.series("epoch_loss", "train")
        if len(va) < th["min_epochs"] or va.lo <= 0:
            return None
        gl = 100.0 * (va.last / va.lo - 1.0)
        if not gl > th["gl"]:
            return None
        if va.last - va.lo < th["min_rise"] * va.head[0]:
            return None  # near a loss of 0, a few per cent of it is noise
        k = int(th["strips"])
        recent = va.tail(k + 1)
        if len(recent) < k + 1 or not all(
            b > a for a, b in zip(recent, recent[1:], strict=False)
        ):
            return None  # Prechelt's UP_s: rising at `strips` successive evaluations
        ev = {"valid_loss": va.last, "best_valid_loss": va.lo, "gl_percent": gl}
        if len(tr):
            vals = list(va.values)
            best_at = va.steps[vals.index(va.lo)] if va.lo in vals else va.steps[0]
            pairs = zip(tr.steps, tr.values, strict=True)
            before = [v for s, v in pairs if s <= best_at]
            if before and not tr.last < before[-1]:
                return None  # both rise: divergence, not overfitting
            ev["train_loss"] = tr.last
        return Finding(
            va.last_step,
            ev,
            summary=f"validation loss {va.last:.3g} is {gl:.0f} % above its best "
            f"{va.lo:.3g} while the training loss falls",
        )
