"""Badly scaled inputs or initialisation: gradients far out of range.

Two readings, either fires: the per-sample gradient-element histogram's edge
bins (Cockpit), and the input scale read off the input layer's gradients.
"""

from __future__ import annotations

import math

from glasscockpit.diagnosis.base import Finding, Rule, Thresholds
from glasscockpit.diagnosis.history import History, median


class BadlyScaled(Rule):
    """Edge-bin share ≥ ``edge_share``, or the input layer's input RMS ≥ ``input_rms``.

    The gradient-element histogram's range is Cockpit's (−2, 2) unless the user
    chose another; values outside it are clamped into the two edge bins.

    The input scale: for an affine layer y = Wx + b, one sample's gradients are
    ∂W = δxᵀ and ∂b = δ, so ‖∂W‖/‖∂b‖ = ‖x‖ exactly, whatever comes after the
    layer (LayerNorm downstream rescales δ, not this ratio). Divided by
    √fan-in (W's size over b's, from the run's ``parameter_shapes``) it is the
    RMS of the layer's input elements; on a batch gradient it is a weighted
    average of the same. The input layer is the first weight tensor (≥ 2 dims)
    in the order of the model's parameters; it must have a bias.
    """

    name = "badly_scaled"
    title = "Badly scaled inputs or initialisation"
    severity = "warning"
    # Checked when a histogram arrives (log-spaced by default); the input scale
    # reads the per-layer gradient norms' newest window then.
    needs = ("grad_hist_1d",)
    panels = ("grad_hist_1d", "grad_norm")
    layered = ("grad_norm",)
    thresholds = {"edge_share": 0.05, "input_rms": 10.0, "window": 5.0}
    explanation = (
        "A large share of the individual (per-sample) gradient elements lies "
        "outside the histogram's range and piles up in its two edge bins. Each "
        "per-sample weight gradient is the layer's input times the gradient of "
        "its output, so inputs or activations orders of magnitude above 1 "
        "(unnormalised data, e.g. pixels in [0, 255]; weights initialised too "
        "large) spread the histogram far beyond the scale a well-conditioned "
        "network has. The Cockpit paper spotted incorrectly scaled data exactly "
        "this way, before the loss curve showed anything. The per-layer gradient "
        "norms show which layers are affected. The input layer's own gradients "
        "also measure its inputs: ‖∂W‖/‖∂b‖ is the input's norm, so their ratio "
        "over √fan-in is the inputs' RMS, which for normalised data is about 1 "
        "and stays readable behind LayerNorm, which hides the scale from the "
        "rest of the network (and from the histogram) but not from this layer."
    )
    remedies = (
        "Normalise the inputs (zero mean, unit variance per feature/channel).",
        "Initialise with Kaiming/Xavier scaling; check custom init code.",
        "Add normalisation layers (BatchNorm/LayerNorm).",
    )
    source = "Schneider, Dangel & Hennig 2021 (Cockpit), gradient-element histogram"

    def check(self, h: History, th: Thresholds) -> Finding | None:
        """Edge-bin share of the newest histogram, else the input layer's scale."""
        return self._edges(h, th) or self._inputs(h, th)

    def _edges(self, h: History, th: Thresholds) -> Finding | None:
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

    def _inputs(self, h: History, th: Thresholds) -> Finding | None:
        layer = input_layer(h)
        if layer is None:
            return None
        prefix, fan_in = layer
        n = int(th["window"])
        w = h.series("grad_norm", prefix + "weight")
        b = h.series("grad_norm", prefix + "bias")
        if len(w) < n or len(b) < n or w.last_step != b.last_step:
            return None
        rms = median(
            [
                gw / gb / math.sqrt(fan_in)
                for gw, gb in zip(w.tail(n), b.tail(n), strict=True)
                if gb > 0 and math.isfinite(gw / gb)
            ]
        )
        if not rms >= th["input_rms"]:
            return None
        return Finding(
            w.last_step,
            {"input_rms": rms, "fan_in": float(fan_in)},
            summary=f"the inputs of {prefix + 'weight'} have an RMS of about "
            f"{rms:.3g} (normalised data: about 1)",
            since=w.tail_steps(n)[0],
        )


def input_layer(h: History) -> tuple[str, int] | None:
    """(name prefix, fan-in) of the input layer, from the metadata, or None.

    The input layer is the first weight (a name ending in "weight", ≥ 2 dims)
    in the model's parameter order; without a bias it gives no reading (a
    later layer is no stand-in: ResNet's first conv has no bias, and its fc
    reads pooled features, not the data).
    """
    shapes = h.meta.get("parameter_shapes")
    if not isinstance(shapes, dict):
        return None
    for name, shape in shapes.items():
        if not (isinstance(name, str) and name.endswith("weight")):
            continue
        if not (isinstance(shape, list) and len(shape) >= 2):
            continue  # norm layers' weights are vectors
        prefix = name[: -len("weight")]
        bias = shapes.get(prefix + "bias")
        if not isinstance(bias, list):
            return None
        size, out = math.prod(shape), math.prod(bias)
        return (prefix, size // out) if out > 0 and size % out == 0 else None
    return None
