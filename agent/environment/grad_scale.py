"""Steps trained with ``torch.amp.GradScaler``: the loss scale taken off gradients.

``scaler.scale(loss).backward()`` leaves ``s·∇L`` in ``.grad`` until
``scaler.unscale_(optimizer)`` (which the user may call inside the step, e.g.
to clip, or leave to ``scaler.step``), and ``s`` times every output gradient
the engine records. Instruments read gradients of the loss itself, so both are
divided by ``s``: by the scale tensor, on its device, without a host sync.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor
from torch.optim import Optimizer


@dataclass(frozen=True)
class GradScale:
    """Factors the step's gradients carry.

    Attributes:
        grads: of ``.grad`` now (1 once ``unscale_`` ran for the optimizer).
        outputs: of the output gradients recorded in the backward pass.
    """

    grads: Tensor | float
    outputs: Tensor | float


def current(scaler: Any, optimizer: Optimizer | None) -> GradScale | None:
    """The factors of ``scaler``'s current step, or None when nothing is scaled."""
    if scaler is None or not scaler.is_enabled():
        return None
    # GradScaler creates its scale tensor on the first ``scale()``; read the
    # tensor (no sync) rather than ``get_scale()`` (a float, hence a sync).
    scale = getattr(scaler, "_scale", None)
    if scale is None:
        return None
    unscaled = False
    states = getattr(scaler, "_per_optimizer_states", None)
    if optimizer is not None and states is not None and id(optimizer) in states:
        stage = states[id(optimizer)].get("stage")
        unscaled = getattr(stage, "name", "") == "UNSCALED"
    return GradScale(grads=1.0 if unscaled else scale, outputs=scale)


def divide(t: Tensor, factor: Tensor | float) -> Tensor:
    """``t / factor`` (``t`` itself for a factor of 1)."""
    if isinstance(factor, float):
        return t if factor == 1.0 else t / factor
    return t / factor.to(device=t.device, dtype=t.dtype)
