"""StepView: the read-only view of one tracked step that instruments compute from."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, overload

import torch
from torch import Tensor, nn

from glasscockpit.agent.engine import EngineError, StepStats
from glasscockpit.agent.engine.errors import dense_grad
from glasscockpit.agent.engine.stats import Outer, Sampled, Scaled, Sparse
from glasscockpit.agent.environment.distributed import Group
from glasscockpit.agent.environment.grad_scale import GradScale, divide
from glasscockpit.agent.environment.local_grads import LocalGrads
from glasscockpit.agent.lifecycle.needs import RECORDED, Need

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from glasscockpit.agent.curvature.hessian_products import HessianOperator


class UndeclaredNeedError(RuntimeError):
    """An instrument read step data it did not declare in ``needs``."""


class StepData:
    """Engine results of one step, shared by every instrument's view.

    Args:
        stats: builds the step's per-sample statistics on first use (may raise
            ``EngineError``); None when no engine is attached.
        ggn: the GGN diagonal computed before the backward pass, or the error
            that prevented it.
    """

    def __init__(
        self,
        stats: Callable[[StepData], StepStats] | None = None,
        ggn: dict[str, Tensor] | Exception | None = None,
    ) -> None:
        self._make = stats
        self._stats: StepStats | Exception | None = None
        self.ggn = ggn
        #: Set when ``ggn`` is an estimate rather than exact (a note for readers).
        self.ggn_note: str | None = None
        #: The process group whose batches make the step (data parallelism):
        #: curvature products are of the global loss. None: one process.
        self.group: Group | None = None
        #: This process's weight in the global mean loss (its sample count).
        self.count = 1.0
        #: Set once the step's sums were added over processes: ``"n"`` (the
        #: global sample count) and ``"sgs"`` per parameter name (optional).
        self.reduced: dict[str, Any] | None = None

    def stats(self) -> StepStats:
        """The per-sample statistics; raises the engine's error if unavailable."""
        if self._stats is None:
            if self._make is None:
                raise RuntimeError("No per-sample engine is attached to this Cockpit")
            try:
                self._stats = self._make(self)
            except Exception as exc:  # noqa: BLE001 - re-raised to every reader
                self._stats = exc
        if isinstance(self._stats, Exception):
            raise self._stats
        return self._stats


@dataclass
class StepView:
    """What one step offers to instruments; accessors check declared needs."""

    step: int
    loss: Tensor | None
    params: Sequence[tuple[str, nn.Parameter]]
    lrs: Sequence[float]
    batch_size: int | None
    allowed: frozenset[Need] = frozenset(Need)
    data: StepData = field(default_factory=StepData)
    #: Learning rate of each tracked parameter's optimizer group (by name).
    param_lrs: Mapping[str, float] = field(default_factory=dict)
    #: Per-sample losses [B] as passed to ``cockpit.step(losses=...)``.
    losses: Tensor | None = None
    opt: Optimizer | None = None
    #: Parameters at construction of the Cockpit, parallel to ``params``.
    init: Sequence[Tensor] | None = None
    #: θ_{t+1} − θ_t parallel to ``params``; set only in the AFTER_STEP phase.
    applied: Sequence[Tensor] | None = None
    #: Shared by all views of one step, e.g. one Hessian operator for all.
    cache: dict[str, Any] = field(default_factory=dict)
    #: Why the model's samples are not independent at this step (train-mode
    #: BatchNorm), or None: per-sample losses are then undefined.
    mixes: str | None = None
    #: The loss scale the step's gradients carry (``GradScaler``), or None.
    grad_scale: GradScale | None = None
    #: This process's gradients when ``.grad`` is all-reduced (multi-process DDP).
    local: LocalGrads | None = None

    def require(self, need: Need) -> None:
        """Raise ``UndeclaredNeedError`` unless ``need`` was declared."""
        if need not in self.allowed:
            raise UndeclaredNeedError(
                f"Step data {need.value!r} was read but not declared; "
                f"add Need.{need.name} to the instrument's needs"
            )

    def grads(self) -> list[tuple[str, Tensor]]:
        """(name, p.grad) for every tracked parameter with a gradient.

        Under multi-process DDP the gradient of this process's batch (the one
        its per-sample statistics describe), not the all-reduced ``.grad``.
        """
        self.require(Need.GRAD)
        if self.local is not None:
            factor = 1.0 if self.grad_scale is None else self.grad_scale.outputs
            local = [(n, self.local.get(p)) for n, p in self.params]
            return [(n, divide(g, factor)) for n, g in local if g is not None]
        grads = [(n, dense_grad(p)) for n, p in self.params]
        return [(n, self.unscaled(g)) for n, g in grads if g is not None]

    def unscaled(self, grad: Tensor) -> Tensor:
        """``grad`` (a ``.grad`` read now) without the loss scale of ``GradScaler``."""
        if self.grad_scale is None:
            return grad
        return divide(grad, self.grad_scale.grads)

    def param_data(self) -> list[tuple[str, Tensor]]:
        """(name, p.detach()) of every tracked parameter, at this phase."""
        self.require(Need.PARAMS)
        return [(n, p.detach()) for n, p in self.params]

    # -- per-sample statistics (hook engine) ----------------------------------------
    def sample_count(self) -> int:
        """``B``, the number of samples the per-sample statistics were taken over."""
        if not self.allowed & RECORDED:
            raise UndeclaredNeedError(
                "sample_count() needs one of "
                + ", ".join(sorted(n.name for n in RECORDED))
            )
        if self.data.reduced is not None:
            return int(self.data.reduced["n"])
        return self.data.stats().batch_size

    def _samples(self) -> StepStats:
        """The per-sample statistics, which only exist for this process's samples."""
        if self.data.reduced is not None:
            raise RuntimeError(
                "Per-sample values are this process's: read them in the "
                "instrument's local(), not in reading() (data parallelism)"
            )
        return self.data.stats()

    def batch_l2(self) -> dict[str, Tensor]:
        """``‖g_n‖²`` per parameter name, each ``[B]``."""
        self.require(Need.BATCH_L2)
        return self._samples().batch_l2()

    def batch_dot(self) -> dict[str, Tensor]:
        """``g_n · g`` per parameter name, ``g`` its ``.grad``, each ``[B]``."""
        self.require(Need.BATCH_DOT)
        return self._samples().batch_dot()

    def sample_dots(
        self, directions: Sequence[Mapping[str, Tensor]], grad: bool = False
    ) -> Tensor:
        """``[K, B]``: ``g_n · d_k`` summed over all tracked parameters, float64.

        Needs every parameter covered (a slope along ``d`` that leaves some
        parameters out is a different slope): raises ``EngineError`` otherwise.

        Args:
            directions: ``d_k`` by tracked parameter name (missing names: zero).
            grad: also compute ``batch_dot`` in the same pass over the
                per-sample gradients (if no instrument asked for it yet).
        """
        self.require(Need.BATCH_DOT)
        stats = self._samples()
        uncovered = stats.engine.uncovered
        if uncovered:
            raise EngineError(
                f"needs per-sample gradients of every parameter; {len(uncovered)} "
                f"not covered: {', '.join(uncovered[:4])} "
                f"({stats.engine.coverage[uncovered[0]]})"
            )
        rows = []
        for dots in stats.dots_with(directions, grad):
            if not dots:
                rows.append(torch.zeros(stats.batch_size, dtype=torch.float64))
                continue
            # One stack, conversion and sum (on the values' device), not a few
            # kernels per parameter.
            rows.append(_sum64(list(dots.values())))
        if not rows:
            return torch.zeros((0, stats.batch_size), dtype=torch.float64)
        return torch.stack(rows)

    def sum_grad_squared(self) -> dict[str, Tensor]:
        """``Σ_n g_n²`` per parameter name, each of the parameter's shape."""
        self.require(Need.SUM_GRAD_SQUARED)
        if self.data.reduced is not None and "sgs" in self.data.reduced:
            sgs: dict[str, Tensor] = self.data.reduced["sgs"]
            return sgs
        return self.data.stats().sum_grad_squared()

    def batch_grads(
        self, max_elements: int | None = None
    ) -> Iterator[tuple[str, Tensor, Tensor]]:
        """``(name, θ, g_n [b, *θ.shape])`` one layer (or chunk of samples) at a time.

        ``max_elements`` caps the values per yielded tensor (``b ≤ B`` samples);
        drop each tensor after use.
        """
        self.require(Need.BATCH_GRAD)
        return self._samples().batch_grads(max_elements)

    @overload
    def batch_grads_factored(
        self,
        max_elements: int | None = None,
        *,
        sparse: Literal[False] = False,
        views: Literal[False] = False,
    ) -> Iterator[tuple[str, Tensor, Tensor | Outer]]: ...

    @overload
    def batch_grads_factored(
        self,
        max_elements: int | None = None,
        *,
        sparse: bool,
        views: bool = False,
        sample: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Iterator[tuple[str, Tensor, Tensor | Outer | Sparse | Scaled | Sampled]]: ...

    def batch_grads_factored(
        self,
        max_elements: int | None = None,
        *,
        sparse: bool = False,
        views: bool = False,
        sample: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Iterator[tuple[str, Tensor, Tensor | Outer | Sparse | Scaled | Sampled]]:
        """``batch_grads``, with rank-one weights as ``Outer`` factors (unbuilt).

        ``Outer.chunks`` builds them where a consumer needs the values. With
        ``sparse``, embedding weights come as their nonzero rows (``Sparse``);
        with ``views``, per-sample gradients kept for other statistics as
        read-only ``Scaled`` views (``Scaled.built`` copies them); with
        ``sample``, layers of more values than that as ``Sampled`` gradients of
        some samples (``StepStats.batch_grads_factored``).
        """
        self.require(Need.BATCH_GRAD)
        return self._samples().batch_grads_factored(
            max_elements, sparse, views, sample, generator
        )

    def diag_ggn(self) -> dict[str, Tensor]:
        """Exact GGN diagonal of the mean loss per parameter name (its shape)."""
        self.require(Need.DIAG_GGN)
        ggn = self.data.ggn
        if isinstance(ggn, Exception):
            raise ggn
        if ggn is None:
            raise RuntimeError("The GGN diagonal was not computed at this step")
        return ggn

    def sample_losses(self) -> Tensor:
        """Per-sample losses, shape [B], still attached to the graph."""
        self.require(Need.LOSSES)
        if self.mixes is not None:
            raise EngineError(self.mixes)
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
        if self.data.group is not None:
            # BackPACK's extra backward pass would run DDP's gradient all-reduce.
            return None
        if "diag_hessian" not in self.cache:
            from glasscockpit.agent.curvature.hessian_products import (
                backpack_diag_hessian,
            )

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
        from glasscockpit.agent.curvature.hessian_products import HessianOperator

        op = self.cache.get("hessian")
        if not isinstance(op, HessianOperator):
            params = [p for _, p in self.params]
            if self.data.group is not None:
                from glasscockpit.agent.curvature.data_parallel import GlobalHessian

                op = GlobalHessian(loss, params, self.data.group, self.data.count)
            else:
                op = HessianOperator(loss, params)
            self.cache["hessian"] = op
        return op


def _sum64(values: Sequence[Tensor]) -> Tensor:
    """Elementwise sum of same-shaped tensors in float64: one stack, one sum."""
    if len({v.dtype for v in values}) == 1:
        return torch.stack(list(values)).double().sum(0)
    return torch.stack([v.double() for v in values]).sum(0)
