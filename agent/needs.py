"""What an instrument needs from the backward pass; the engine serves the union."""

from __future__ import annotations

from enum import Enum


class Need(Enum):
    """A required input of the step, computed once per step for all instruments.

    Per-sample quantities use Cockpit's scale: ``g_n`` is the gradient of sample
    ``n``'s loss, ``B`` times what a mean-reduced loss gives per sample.
    """

    GRAD = "grad"  # p.grad, the mini-batch gradient
    PARAMS = "params"  # p.data before the optimizer step
    BATCH_L2 = "batch_l2"  # ‖g_n‖² per parameter, [B]
    BATCH_DOT = "batch_dot"  # g_n · p.grad per parameter, [B]
    SUM_GRAD_SQUARED = "sum_grad_squared"  # Σ_n g_n² per parameter, its shape
    BATCH_GRAD = "batch_grad"  # g_n per parameter, [B, *shape], one layer at a time
    DIAG_GGN = "diag_ggn"  # exact GGN diagonal of the mean loss per parameter


#: Needs served by the hook engine: the forward pass must be recorded.
RECORDED: frozenset[Need] = frozenset(
    {
        Need.BATCH_L2,
        Need.BATCH_DOT,
        Need.SUM_GRAD_SQUARED,
        Need.BATCH_GRAD,
        Need.DIAG_GGN,
    }
)
