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
    BATCH_DOT = "batch_dot"  # g_n · p.grad per parameter, [B]; g_n · d for any d
    SUM_GRAD_SQUARED = "sum_grad_squared"  # Σ_n g_n² per parameter, its shape
    BATCH_GRAD = "batch_grad"  # g_n per parameter, [B, *shape], one layer at a time
    DIAG_GGN = "diag_ggn"  # exact GGN diagonal of the mean loss per parameter
    # Curvature and step-size instruments (part B of issue 3).
    HVP = "hvp"  # the loss graph before backward: Hessian-vector products
    LOSSES = "losses"  # per-sample losses [B] passed as cockpit.step(losses=...)
    INIT_PARAMS = "init_params"  # the parameters when Cockpit was constructed
    UPDATE = "update"  # θ_{t+1} − θ_t, in the AFTER_STEP phase
    OPTIMIZER = "optimizer"  # the optimizer (state, hyperparameters)
    DIAG_HESSIAN = "diag_hessian"  # exact diag of H by BackPACK, before backward


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

#: Needs that differentiate the step's graph twice: its forward pass runs under
#: the math attention kernel (``agent/curvature/double_backward_kernels.py``).
TWICE: frozenset[Need] = frozenset({Need.HVP})
