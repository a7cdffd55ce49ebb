"""What an instrument needs from the backward pass; the engine serves the union."""

from __future__ import annotations

from enum import Enum


class Need(Enum):
    """A required input of the step, computed once per step for all instruments."""

    GRAD = "grad"  # p.grad, the mini-batch gradient
    PARAMS = "params"  # p.data before the optimizer step
    # Curvature and step-size instruments (part B of issue 3).
    HVP = "hvp"  # the loss graph before backward: Hessian-vector products
    LOSSES = "losses"  # per-sample losses [B] passed as cockpit.step(losses=...)
    INIT_PARAMS = "init_params"  # the parameters when Cockpit was constructed
    UPDATE = "update"  # θ_{t+1} − θ_t, in the AFTER_STEP phase
    OPTIMIZER = "optimizer"  # the optimizer (state, hyperparameters)
    DIAG_HESSIAN = "diag_hessian"  # exact diag of H by BackPACK, before backward
