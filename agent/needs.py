"""What an instrument needs from the backward pass; the engine serves the union."""

from __future__ import annotations

from enum import Enum


class Need(Enum):
    """A required input of the step, computed once per step for all instruments."""

    GRAD = "grad"  # p.grad, the mini-batch gradient
    PARAMS = "params"  # p.data before the optimizer step
