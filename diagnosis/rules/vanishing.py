"""Vanishing gradients: the first layers' gradients orders below the last ones'."""

from __future__ import annotations

import math

from glasscockpit.diagnosis.base import Finding, Rule, Thresholds
from glasscockpit.diagnosis.history import History, median


def weight_keys(h: History) -> list[str]:
    """Per-layer keys of weight matrices/kernels in model order (not biases)."""
    return [k for k in h.keys("grad_norm") if not k.endswith("bias")]


class VanishingGradients(Rule):
    """Median ratio ‖g_first‖ / ‖g_last‖ of weight tensors below 10^-orders."""

    name = "vanishing_gradients"
    title = "Vanishing gradients"
    severity = "warning"
    needs = ("grad_norm",)
    layered = ("grad_norm",)
    thresholds = {"orders": 3.0, "window": 5.0}
    explanation = (
        "The gradient of the first weight tensor is more than `orders` orders of "
        "magnitude smaller than that of the last one (median over `window` "
        "readings). Backpropagation multiplies by every layer's Jacobian; "
        "saturating activations (sigmoid, tanh) and small weights shrink it at "
        "each layer, so in a deep stack the first layers barely move (Hochreiter "
        "1991; Glorot & Bengio 2010). Layers with no gradient at all are reported "
        "as dead units instead."
    )
    remedies = (
        "Use ReLU-family activations instead of sigmoid/tanh in deep stacks.",
        "Initialise with Xavier/Kaiming scaling for the activation.",
        "Add residual connections or normalisation layers.",
    )
    source = "Glorot & Bengio 2010; Hochreiter 1991 (per-layer gradient norms)"

    def check(self, h: History, th: Thresholds) -> Finding | None:
        """Compare the first and last weight tensors' gradient norms."""
        keys = weight_keys(h)
        if len(keys) < 2:
            return None
        n = int(th["window"])
        first, last = h.series("grad_norm", keys[0]), h.series("grad_norm", keys[-1])
        if len(first) < n:
            return None
        ratios = [
            a / b
            for a, b in zip(first.tail(n), last.tail(n), strict=False)
            if a > 0 and b > 0 and math.isfinite(a / b)
        ]
        if len(ratios) < n:
            return None  # exact zeros: dead units; non-finite: exploding
        r = median(ratios)
        if r >= 10 ** -th["orders"]:
            return None
        return Finding(
            first.last_step,
            {
                "first_grad_norm": first.last,
                "last_grad_norm": last.last,
                "orders_below": -math.log10(r),
            },
            summary=f"‖g‖ of {keys[0]} is {-math.log10(r):.1f} orders below {keys[-1]}",
            since=first.tail_steps(n)[0],
        )
