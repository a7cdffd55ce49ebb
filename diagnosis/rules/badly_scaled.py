"""Badly scaled inputs or initialisation: per-sample gradients far out of range."""

from __future__ import annotations

from glasscockpit.diagnosis.base import Finding, Rule, Thresholds
from glasscockpit.diagnosis.history import History


class BadlyScaled(Rule):
    """Share ≥ ``edge_share`` of per-sample gradient elements in the edge bins.

    The gradient-element histogram's range is Cockpit's (−2, 2) unless the user
    chose another; values outside it are clamped into the two edge bins.
    """

    name = "badly_scaled"
    title = "Badly scaled inputs or initialisation"
    severity = "warning"
    needs = ("grad_hist_1d",)
    panels = ("grad_hist_1d", "grad_norm")
    thresholds = {"edge_share": 0.05}
    explanation = (
        "A large share of the individual (per-sample) gradient elements lies "
        "outside the histogram's range and piles up in its two edge bins. Each "
        "per-sample weight gradient is the layer's input times the gradient of "
        "its output, so inputs or activations orders of magnitude above 1 "
        "(unnormalised data, e.g. pixels in [0, 255]; weights initialised too "
        "large) spread the histogram far beyond the scale a well-conditioned "
        "network has. The Cockpit paper spotted incorrectly scaled data exactly "
        "this way, before the loss curve showed anything. The per-layer gradient "
        "norms show which layers are affected."
    )
    remedies = (
        "Normalise the inputs (zero mean, unit variance per feature/channel).",
        "Initialise with Kaiming/Xavier scaling; check custom init code.",
        "Add normalisation layers (BatchNorm/LayerNorm).",
    )
    source = "Schneider, Dangel & Hennig 2021 (Cockpit), gradient-element histogram"

    def check(self, h: History, th: Thresholds) -> Finding | None:
        """Edge-bin share of the newest gradient-element histogram."""
        snap = h.snapshot("grad_hist_1d")
        if snap is None:
            return None
        counts = snap.get("counts")
        if not counts or len(counts) < 3:
            return None
        total = sum(counts)
        if total <= 0:
            return None
        edge = (counts[0] + counts[-1]) / total
        if edge < th["edge_share"]:
            return None
        ev = {"edge_share": edge}
        edges = snap.get("edges")
        if edges:
            ev["range_low"], ev["range_high"] = edges[0], edges[-1]
        return Finding(
            snap.step,
            ev,
            summary=f"{edge:.0%} of per-sample gradient elements beyond the "
            "histogram's range",
        )
