"""StepView: the read-only view of one tracked step that instruments compute from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from glasscockpit.agent.needs import Need

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from glasscockpit.agent.curvature import HessianOperator


class UndeclaredNeedError(RuntimeError):
    """An instrument read step data it did not declare in ``needs``."""


@dataclass
class StepView:
    """What one step offers to instruments; accessors check declared needs."""

    step: int
    loss: Tensor | None
    params: Sequence[tuple[str, nn.Parameter]]
    lrs: Sequence[float]
    batch_size: int | None
    allowed: frozenset[Need] = frozenset(Need)
    #: Per-sample losses [B] as passed to ``cockpit.step(losses=...)``.
    losses: Tensor | None = None
    opt: Optimizer | None = None
    #: Parameters at construction of the Cockpit, parallel to ``params``.
    init: Sequence[Tensor] | None = None
    #: θ_{t+1} − θ_t parallel to ``params``; set only in the AFTER_STEP phase.
    applied: Sequence[Tensor] | None = None
    #: Shared by all views of one step, e.g. one Hessian operator for all.
    cache: dict[str, Any] = field(default_factory=dict)

    def require(self, need: Need) -> None:
        """Raise ``UndeclaredNeedError`` unless ``need`` was declared."""
        if need not in self.allowed:
            raise UndeclaredNeedError(
                f"Step data {need.value!r} was read but not declared; "
                f"add Need.{need.name} to the instrument's needs"
            )

    def grads(self) -> list[tuple[str, Tensor]]:
        """(name, p.grad) for every tracked parameter with a gradient."""
        self.require(Need.GRAD)
        return [(n, p.grad) for n, p in self.params if p.grad is not None]

    def param_data(self) -> list[tuple[str, Tensor]]:
        """(name, p.detach()) of every tracked parameter, at this phase."""
        self.require(Need.PARAMS)
        return [(n, p.detach()) for n, p in self.params]

    def sample_losses(self) -> Tensor:
        """Per-sample losses, shape [B], still attached to the graph."""
        self.require(Need.LOSSES)
        if self.losses is None:
            raise ValueError(
                "This instrument needs per-sample losses: pass them as "
                "cockpit.step(step, loss=loss, losses=per_sample_losses), e.g. "
                "losses = F.cross_entropy(out, y, reduction='none')"
            )
        return self.losses

    def init_params(self) -> list[tuple[str, Tensor]]:
        """(name, θ_0) with θ_0 the parameters when the Cockpit was constructed."""
        self.require(Need.INIT_PARAMS)
        if self.init is None:
            raise RuntimeError("No initial parameters were recorded")
        return [(n, t) for (n, _), t in zip(self.params, self.init, strict=True)]

    def update(self) -> list[tuple[str, Tensor]]:
        """(name, θ_{t+1} − θ_t): the update actually applied; AFTER_STEP only."""
        self.require(Need.UPDATE)
        if self.applied is None:
            raise RuntimeError("The applied update exists only in Phase.AFTER_STEP")
        return [(n, d) for (n, _), d in zip(self.params, self.applied, strict=True)]

    def optimizer(self) -> Optimizer | None:
        """The optimizer given to the Cockpit, or None."""
        self.require(Need.OPTIMIZER)
        return self.opt

    def diag_hessian(self) -> list[Tensor] | None:
        """Exact Hessian diagonal per parameter (BackPACK), None where it fails.

        BEFORE_BACKWARD only; needs a ``backpack.extend``-ed model and loss module.
        """
        self.require(Need.DIAG_HESSIAN)
        if "diag_hessian" not in self.cache:
            from glasscockpit.agent.curvature import backpack_diag_hessian

            loss = self._graph_loss()
            params = [p for _, p in self.params]
            self.cache["diag_hessian"] = backpack_diag_hessian(loss, params)
        diag: list[Tensor] | None = self.cache["diag_hessian"]
        return diag

    def _graph_loss(self) -> Tensor:
        if self.loss is None:
            raise ValueError(
                "Curvature instruments need the loss: cockpit.step(step, loss=loss)"
            )
        if not self.loss.requires_grad or self.loss.grad_fn is None:
            raise RuntimeError(
                "The loss has no graph: curvature runs before backward and needs "
                "the loss tensor that is about to be backpropagated"
            )
        return self.loss

    def hessian(self) -> HessianOperator:
        """Hessian-vector products of ``loss``; BEFORE_BACKWARD only, one per step."""
        self.require(Need.HVP)
        loss = self._graph_loss()
        from glasscockpit.agent.curvature import HessianOperator

        op = self.cache.get("hessian")
        if not isinstance(op, HessianOperator):
            op = self.cache["hessian"] = HessianOperator(
                loss, [p for _, p in self.params]
            )
        return op
