"""Inner-product test (Bollapragada et al. 2017), O(B·D) without a Gram matrix."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor
from typing_extensions import override

from glasscockpit.agent.instruments.base import (
    Cost,
    Guarded,
    Instrument,
    Reading,
    f32_noise,
    per_name,
    sq_norm_vector,
    stack_rows,
)
from glasscockpit.agent.needs import Need
from glasscockpit.agent.step import StepView
from glasscockpit.protocol import Kind, PanelSpec


def inner_test(u: Tensor, g2: Tensor, b: int) -> Guarded:
    """``sqrt((Σu_n² − B‖g‖⁴) / ((B−1)·B‖g‖⁴))`` with ``u_n = g_n·g`` ``[B]``.

    Batched over leading axes: ``u`` ``[P, B]`` and ``g2`` ``[P]`` give ``[P]``.
    """
    u2 = u.square()
    var = (u2.sum(-1) - b * g2.square()) / max(b - 1, 1)
    valid = (g2.square() > f32_noise(u2.mean(-1))) & (b > 1)
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
        b, dots = step.sample_count(), step.batch_dot()
        names, g2 = sq_norm_vector(step, dots)
        if not names:
            return None
        u = stack_rows(dots[n] for n in names)  # [P, B]
        return {
            "total": inner_test(u.sum(0), g2.sum(), b),
            **per_name(names, inner_test(u, g2, b)),
        }
