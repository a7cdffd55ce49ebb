"""Norm test (Byrd et al. 2012): per-sample gradient variance relative to ‖g‖²."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor
from typing_extensions import override

from glasscockpit.agent.instruments.base import (
    Cost,
    Guarded,
    Instrument,
    Leaf,
    Reading,
    f32_noise,
    sq_norms,
    total,
)
from glasscockpit.agent.needs import Need
from glasscockpit.agent.step import StepView
from glasscockpit.protocol import Kind, PanelSpec


def norm_test(s2: Tensor, g2: Tensor, b: int) -> Guarded:
    """``sqrt((Σ‖g_n‖² − B‖g‖²) / ((B−1)·B‖g‖²))``; undefined for B < 2 or g ≈ 0."""
    var = (s2 - b * g2) / max(b - 1, 1)
    valid = (g2 > f32_noise(s2 / b)) & (b > 1)
    return Guarded.of((var.clamp(min=0) / (b * g2)).sqrt(), valid)


class NormTest(Instrument):
    """The smallest norm-test tolerance θ that the current batch passes."""

    name = "norm_test"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.GRAD, Need.BATCH_L2})
    cost = Cost.MODERATE
    kind = Kind.PER_LAYER
    preset = "economy"
    panel = PanelSpec(
        title="Norm test",
        y_label="θ_norm",
        group="gradients",
        help="Gradient noise relative to the gradient's size; values ≳ 1 mean the "
        "batch is too small for the gradient's direction to be trusted.",
        smooth=True,
        band=(0.0, 1.0),
        card="Gradient tests",
    )

    @override
    def compute(self, step: StepView) -> Reading:
        """Returns {"total": θ, name: θ of that parameter}; None if undefined."""
        b, g2 = step.sample_count(), sq_norms(step)
        s2 = {n: v.double().sum() for n, v in step.batch_l2().items() if n in g2}
        if not s2:
            return None
        out: dict[str, Leaf] = {
            "total": norm_test(total(s2.values()), total(g2[n] for n in s2), b)
        }
        out.update({n: norm_test(v, g2[n], b) for n, v in s2.items()})
        return out
