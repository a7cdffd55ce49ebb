"""Inner-product test (Bollapragada et al. 2017), O(B·D) without a Gram matrix."""

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
    rows_sum,
    sq_norms,
    total,
)
from glasscockpit.agent.needs import Need
from glasscockpit.agent.step import StepView
from glasscockpit.protocol import Kind, PanelSpec


def inner_test(u: Tensor, g2: Tensor, b: int) -> Guarded:
    """``sqrt((Σu_n² − B‖g‖⁴) / ((B−1)·B‖g‖⁴))`` with ``u_n = g_n·g`` ``[B]``."""
    var = (u.square().sum() - b * g2.square()) / max(b - 1, 1)
    valid = (g2.square() > f32_noise(u.square().mean())) & (b > 1)
    return Guarded.of((var.clamp(min=0) / (b * g2.square())).sqrt(), valid)


class InnerTest(Instrument):
    """The smallest inner-product-test tolerance θ that the current batch passes."""

    name = "inner_test"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.GRAD, Need.BATCH_DOT})
    cost = Cost.MODERATE
    kind = Kind.PER_LAYER
    preset = "economy"
    panel = PanelSpec(
        title="Inner-product test",
        y_label="θ_inner",
        group="gradients",
        help="Noise of the per-sample gradients along the mean gradient; values ≳ 1 "
        "mean many samples point against the step.",
        smooth=True,
        band=(0.0, 1.0),
        card="Gradient tests",
    )

    @override
    def compute(self, step: StepView) -> Reading:
        """Returns {"total": θ, name: θ of that parameter}; None if undefined."""
        b, g2 = step.sample_count(), sq_norms(step)
        dots = {n: v.double() for n, v in step.batch_dot().items() if n in g2}
        if not dots:
            return None
        out: dict[str, Leaf] = {
            "total": inner_test(rows_sum(dots.values()), total(g2[n] for n in dots), b)
        }
        out.update({n: inner_test(v, g2[n], b) for n, v in dots.items()})
        return out
