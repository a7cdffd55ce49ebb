"""Orthogonality test (Bollapragada et al. 2017), O(B·D) without a Gram matrix."""

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


def ortho_test(s2: Tensor, u: Tensor, g2: Tensor, b: int) -> Guarded:
    """``sqrt((Σ‖g_n‖² − Σu_n²/‖g‖²) / ((B−1)·B‖g‖²))``, ``u_n = g_n·g`` ``[B]``.

    Batched over leading axes: ``s2``, ``g2`` ``[P]`` and ``u`` ``[P, B]``.
    """
    var = (s2 - u.square().sum(-1) / g2) / max(b - 1, 1)
    valid = (g2 > f32_noise(s2 / b)) & (b > 1)
    return Guarded.of((var.clamp(min=0) / (b * g2)).sqrt(), valid)


class OrthoTest(Instrument):
    """The smallest orthogonality-test tolerance ν that the current batch passes."""

    name = "ortho_test"
    needs: ClassVar[frozenset[Need]] = frozenset(
        {Need.GRAD, Need.BATCH_L2, Need.BATCH_DOT}
    )
    cost = Cost.MODERATE
    kind = Kind.PER_LAYER
    preset = "economy"
    panel = PanelSpec(
        title="Orthogonality test",
        y_label="ν",
        group="gradients",
        help="Noise of the per-sample gradients orthogonal to the mean gradient; "
        "values ≳ 1 mean the step's direction is unreliable.",
        smooth=True,
        band=(0.0, 1.0),
        card="Gradient tests",
    )

    @override
    def compute(self, step: StepView) -> Reading:
        """Returns {"total": ν, name: ν of that parameter}; None if undefined."""
        b = step.sample_count()
        l2, dots = step.batch_l2(), step.batch_dot()
        names, g2 = sq_norm_vector(step, [n for n in l2 if n in dots])
        if not names:
            return None
        s2 = stack_rows(l2[n] for n in names).sum(1)  # [P]
        u = stack_rows(dots[n] for n in names)  # [P, B]
        return {
            "total": ortho_test(s2.sum(), u.sum(0), g2.sum(), b),
            **per_name(names, ortho_test(s2, u, g2, b)),
        }
