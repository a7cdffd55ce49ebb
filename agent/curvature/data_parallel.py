"""Hessian-vector products of the global loss under data parallelism.

The global loss is the sample-weighted mean of the processes' losses,
``L = Σ_r n_r L_r / Σ_r n_r``, so its Hessian-vector product is the same
weighted mean of the local products: one all-reduce per product, carrying
``n_r · H_r v`` and ``n_r`` together, as DDP all-reduces a gradient. Every
process gets the same sum, so Lanczos and Hutchinson take the same path on all
of them (same private seeds, same products).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from glasscockpit.agent.curvature.hessian_products import HessianOperator
from glasscockpit.agent.environment.distributed import Group


class GlobalHessian(HessianOperator):
    """``v ↦ H v`` for the Hessian of the loss over every process's samples.

    Args:
        loss: this process's (mean) loss, its graph intact.
        params: the parameters, the same on every process (DDP replicas).
        group: the process group.
        count: this process's sample count, its weight in the global mean.
    """

    def __init__(
        self, loss: Tensor, params: Sequence[Tensor], group: Group, count: float
    ) -> None:
        super().__init__(loss, params)
        self.group = group
        self.count = float(count)

    def matvec(self, vectors: Sequence[Tensor]) -> list[Tensor]:
        """One product of the global Hessian (one all-reduce)."""
        local = super().matvec(vectors)
        weight = torch.tensor([self.count], dtype=torch.float64)
        if local:
            weight = weight.to(local[0].device)
        *summed, total = self.group.sum(
            [*(h * self.count for h in local), weight], curvature=True
        )
        scale = 1.0 / float(total)
        return [h.mul_(scale) for h in summed]
