"""Exact diagonal of the generalised Gauss-Newton matrix through the hook engine.

For a loss ``L = (1/B) Σ_n ℓ(z_n)`` of the model output ``z`` whose Hessian with
respect to ``z_n`` factorises as ``S_n S_nᵀ``, the GGN diagonal is
``Σ_c Σ_n (J_nᵀ s_{n,c})²`` (the reduction's weights inside ``s``): one pass from
``z`` per column ``c`` (``C`` passes for ``C`` classes), each reduced with the
engine's ``Σ_n ĝ_n²`` rule. For piecewise-linear networks (ReLU, max-pooling) the
GGN diagonal equals the Hessian diagonal (what BackPACK's ``DiagHessian`` gives).

Elementwise losses (squared error, Huber, smooth L1, binary cross-entropy on
logits) have a diagonal Hessian in the outputs: one pass per output element,
carrying the square root of its curvature. Every non-negative weight the loss
gives a token or element (class weights, masks, a user's weighted reduction)
scales its factor.

Token-level cross-entropy (logits ``[B, T, V]`` or ``[B, V, T]``, reshaped,
transposed, sliced or cast between the model and the loss) has one Hessian
block per token: a pass then carries column ``c`` of token ``t`` of every
sample and nothing else (``T·V`` passes), so the squared per-sample gradients
hold no cross terms between tokens of one sample. ``ignore_index`` tokens are
left out and a mean is over the counted tokens, as the loss does.

The passes must run before the user's ``loss.backward()`` frees the graph.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.autograd.graph import GradientEdge

from glasscockpit.agent.engine.hooks import EngineError, HookEngine
from glasscockpit.agent.engine.rules import CONV
from glasscockpit.agent.engine.stats import StepStats
from glasscockpit.agent.engine.tie_rule import tied_layers

#: Identity nodes of full backward hooks (``backpack.extend``-ed modules, also
#: the loss module): passed through without being called.
_IDENTITY = frozenset({"BackwardHookFunctionBackward"})
#: Autograd nodes that only move, select or cast elements: between the model's
#: output and cross_entropy's log_softmax (``logits.reshape(-1, V)``, a
#: transpose, ``logits.float()``) they keep one output element per logit.
_REARRANGE = _IDENTITY | frozenset(
    {
        "ViewBackward0",
        "UnsafeViewBackward0",
        "ReshapeAliasBackward0",
        "TransposeBackward0",
        "TransposeBackward1",
        "PermuteBackward0",
        "CloneBackward0",
        "SelectBackward0",
        "SliceBackward0",
        "SqueezeBackward0",
        "SqueezeBackward1",
        "SqueezeBackward2",
        "UnsqueezeBackward0",
        "ToCopyBackward0",
    }
)
#: Nodes that reduce per-token losses to the loss: means, sums, scalings by a
#: constant (``losses.sum() / n``). Their weights are pulled back and checked.
_REDUCE = frozenset(
    {
        "MeanBackward0",
        "MeanBackward1",
        "SumBackward0",
        "SumBackward1",
        "DivBackward0",
        "DivBackward1",
        "MulBackward0",
        "MulBackward1",
    }
)
#: At most this many backward passes per exact GGN diagonal (``T·V`` for a
#: token-level cross-entropy, ``C`` for a classifier, one per output element of
#: a sample for MSE).
MAX_PASSES = 4096
#: Beyond ``MAX_PASSES``: sampled passes of the Monte-Carlo GGN diagonal.
MC_DRAWS = 16
#: At most this many sampled passes when a time allowance chooses their number.
MC_DRAWS_MAX = 64
#: At least this many: fewer give an estimate too rough to read. An exact
#: diagonal of at most twice as many passes is taken whatever the allowance.
MC_DRAWS_MIN = 8
_NLL = ("NllLossBackward0", "NllLoss2DBackward0")
_MSE = "MseLossBackward0"
#: Losses of one output element each (mean/sum over elements): their Hessian
#: w.r.t. the model output is diagonal, ``element_curvature`` gives it.
_ELEMENTWISE = (
    _MSE,
    "BinaryCrossEntropyWithLogitsBackward0",
    "HuberLossBackward0",
    "SmoothL1LossBackward0",
)


def element_curvature(fn: Any) -> Tensor:
    """``∂²ℓ_e/∂z_e²`` of an elementwise loss node, per element of its input ``z``.

    Squared error: 2. Binary cross-entropy on logits (``pos_weight`` ``w⁺``,
    ``weight`` ``w``): ``w·σ(z)(1 − σ(z))·(1 + (w⁺ − 1)·t)``. Huber: 1 where
    ``|z − y| ≤ δ``, else 0. Smooth L1: ``1/β`` where ``|z − y| ≤ β`` (0 for
    ``β = 0``, the L1 loss). Not yet reduced (``_saved_reduction``).
    """
    name = type(fn).__name__
    z: Tensor = fn._saved_self.detach()
    target: Tensor = fn._saved_target.detach()
    if target.shape != z.shape:
        raise EngineError(
            f"The loss broadcasts the model output {tuple(z.shape)} against the "
            f"target {tuple(target.shape)}: its GGN diagonal is not supported"
        )
    if name == _MSE:
        return torch.full_like(z, 2.0)
    if name == "BinaryCrossEntropyWithLogitsBackward0":
        sig = torch.sigmoid(z.double())
        h = sig * (1.0 - sig)
        if fn._saved_pos_weight is not None:
            h = h * (1.0 + (fn._saved_pos_weight.detach().double() - 1.0) * target)
        if fn._saved_weight is not None:
            h = h * fn._saved_weight.detach().double()
        return h.expand(z.shape).to(z.dtype)
    r = (z - target).abs()
    if name == "HuberLossBackward0":
        return (r <= float(fn._saved_delta)).to(z.dtype)
    beta = float(fn._saved_beta)  # smooth L1
    return (r <= beta).to(z.dtype) / beta if beta > 0 else torch.zeros_like(z)


def _nonnegative(weights: Tensor, what: str) -> Tensor:
    """``weights``, which must be ≥ 0 for the GGN to factor as ``S Sᵀ``."""
    if bool((weights < 0).any()) or not bool(weights.isfinite().all()):
        raise EngineError(
            f"The loss weighs its {what} with negative or non-finite weights: "
            "its GGN diagonal is not a sum of squares"
        )
    return weights


def _only_input(node: Any) -> Any:
    nexts = [f for f, _ in node.next_functions if f is not None]
    return nexts[0] if len(nexts) == 1 else None


#: Products with a constant (a softmax temperature, ``logits * c``): between
#: the model's output and the loss they scale elements, one to one.
_SCALE = frozenset({"MulBackward0", "MulBackward1", "DivBackward0", "DivBackward1"})


def _pull(nodes: list[Any], grad: Tensor, skip: frozenset[str] = _IDENTITY) -> Tensor:
    """Backpropagate ``grad`` through a chain of one-input nodes (``skip``: not)."""
    for node in nodes:
        if type(node).__name__ in skip:
            continue
        out = node(grad)
        if not isinstance(out, tuple):
            grad = out
            continue
        slot = [i for i, (f, _) in enumerate(node.next_functions) if f is not None]
        grad = out[slot[0]]
    return grad


def _walk(
    node: Any, stop: Any, until: str, scale: bool = False
) -> tuple[list[Any], Any]:
    """Rearranging nodes from ``node`` down to ``stop`` or a node named ``until``.

    With ``scale``, products with constants are taken too (``_SCALE``).
    """
    chain: list[Any] = []
    allowed = _REARRANGE | _SCALE if scale else _REARRANGE
    while node is not None and node is not stop and type(node).__name__ != until:
        if type(node).__name__ not in allowed or _only_input(node) is None:
            return chain, None
        chain.append(node)
        node = _only_input(node)
    return chain, node


#: Nodes of ``cross_entropy``'s label-smoothing term between its scaling and
#: the log-softmax: ``−Σ_c log p_c`` per token, masked (``ignore_index``),
#: summed and divided by the count for the mean reduction.
_SMOOTH = frozenset(
    {
        "DivBackward0",
        "SumBackward0",
        "SumBackward1",
        "MaskedFillBackward0",
        "NegBackward0",
    }
)


def _unsmooth(node: Any) -> Any:
    """The NLL node of ``cross_entropy(..., label_smoothing=ε)``, else ``node``.

    Torch computes ``(1 − ε)·NLL + (ε/C)·(−Σ_c log p_c)``. In the logits every
    ``−log p_c`` has the Hessian ``diag p − p pᵀ``, so the sum of both terms has
    the unsmoothed NLL's curvature (and GGN). Matched exactly, else unchanged.
    """
    if type(node).__name__ != "AddBackward0" or getattr(node, "_saved_alpha", 0) != 1:
        return node
    branches = [f for f, _ in node.next_functions]
    if len(branches) != 2 or any(type(b).__name__ != "MulBackward1" for b in branches):
        return node
    (keep, nll), (smooth, tail) = [
        (float(b._saved_other), _only_input(b)) for b in branches
    ]
    if type(nll).__name__ not in _NLL:
        return node
    _, soft = _walk(_only_input(nll), None, "LogSoftmaxBackward0")
    while tail is not None and type(tail).__name__ in _SMOOTH:
        tail = _only_input(tail)
    if soft is None or tail is not soft:
        return node
    classes = soft._saved_result.shape[soft._saved_dim]
    if abs(keep + smooth * classes - 1.0) > 1e-6:
        return node
    return nll


#: Nodes linear in their one differentiable input (the other, if any, constant).
_LINEAR = (
    _REARRANGE
    | _REDUCE
    | {
        "NegBackward0",
        "AddBackward0",
        "SubBackward0",
        "ExpandBackward0",
        "MaskedFillBackward0",
        "GatherBackward0",
        "IndexBackward0",
        "KlDivBackward0",  # Σ t·(log t − input): linear in its input
        *_NLL,
    }
)
#: Linear in each of several differentiable inputs.
_SUMS = frozenset({"AddBackward0", "SubBackward0"})


def _log_softmax_below(loss: Tensor) -> list[Any] | None:
    """The log-softmax nodes of a loss linear in them, else None.

    Every node between the loss and the ``LogSoftmaxBackward0`` nodes must be
    linear (sums, means, scalings, negation, products with constants such as
    probability targets, selections, ``kl_div`` against fixed targets), and
    every path from the loss must end there or at a constant: then
    ``L = Σ a·log p + const``. Several log-softmaxes of one tensor along one
    dimension (mixup as ``λ·CE(z, y_a) + (1 − λ)·CE(z, y_b)``) are the same
    ``log p``.
    """
    softs: list[Any] = []
    stack, seen = [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        name = type(node).__name__
        if name == "LogSoftmaxBackward0":
            softs.append(node)
            continue
        if name not in _LINEAR:
            return None
        inputs = [f for f, _ in node.next_functions if f is not None]
        if len(inputs) > 1 and name not in _SUMS:
            return None  # e.g. a product of two differentiable factors
        stack.extend(inputs)
    if not softs:
        return None
    first = softs[0]
    ndim = first._saved_result.dim()
    for soft in softs[1:]:
        if (
            _only_input(soft) is not _only_input(first)
            or soft._saved_dim % ndim != first._saved_dim % ndim
            or soft._saved_result.shape != first._saved_result.shape
        ):
            return None
    return softs


def _reaches(loss: Tensor, nodes: list[Any]) -> bool:
    """Whether ``loss``'s graph goes through any of ``nodes``.

    An earlier forward pass that the loss does not use (a validation batch run
    in grad mode between steps) is no micro-batch of this step.
    """
    wanted = set(nodes)
    stack, seen = [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        if node in wanted:
            return True
        seen.add(node)
        stack.extend(f for f, _ in node.next_functions)
    return False


def _reduction_chain(node: Any) -> tuple[list[Any], Any]:
    """Reducing and rearranging nodes from the loss down to the first other node."""
    chain: list[Any] = []
    while type(node).__name__ in _REDUCE | _REARRANGE:
        below = _only_input(node)
        if below is None:
            return [], None
        chain.append(node)
        node = below
    return chain, node


def _pull_inputs(nodes: list[Any], grad: Tensor) -> Tensor:
    """Like ``_pull``, following each node's one differentiable input."""
    for node in nodes:
        if type(node).__name__ in _IDENTITY:
            continue
        out = node(grad)
        if not isinstance(out, tuple):
            grad = out
            continue
        slot = [i for i, (f, _) in enumerate(node.next_functions) if f is not None]
        grad = out[slot[0]]
    return grad


class _Loss:
    """The loss's Hessian w.r.t. the model output, as factors ``Σ_k s_k s_kᵀ``.

    ``passes()`` yields gradients for the model output such that the sum over
    passes of the squared per-sample gradients is the GGN diagonal (the loss's
    weights are inside the factors): each pass carries at most one token per
    sample, so no cross terms between tokens of one sample arise.
    """

    def __init__(self, loss: Tensor, output: Tensor) -> None:
        self.output = output
        #: Where the passes start and a tensor of that shape: the model output,
        #: or the logits inside it when the model ends with its log-softmax.
        self.start: Tensor | GradientEdge = output
        self.like = output.detach()
        #: Set when the split of model and loss is not where the Hessian
        #: diagonal equals the GGN's even for piecewise-linear models.
        self.note: str | None = None
        fn = loss.grad_fn
        while type(fn).__name__ in _IDENTITY and _only_input(fn) is not None:
            fn = _only_input(fn)  # an extended loss module's backward hook
        fn = _unsmooth(fn)
        name = type(fn).__name__
        reduction = getattr(fn, "_saved_reduction", None)
        # Per-token losses (``cross_entropy(..., reduction="none")``) reduced to the
        # scalar by means, sums and scalings (``losses.mean()``, per-sequence means
        # then their mean, ``losses.sum() / n``): the weight of each token.
        token_weight: Tensor | None = None
        leaves = (*_NLL, *_ELEMENTWISE)
        if loss.dim() == 0 and name not in leaves:
            chain, inner = _reduction_chain(fn)
            inner = _unsmooth(inner)
            if (
                chain
                and type(inner).__name__ in leaves
                and getattr(inner, "_saved_reduction", None) == 0
            ):
                token_weight = _pull_inputs(chain, torch.ones_like(loss)).detach()
                fn, reduction = inner, 2
                name = type(fn).__name__
        softs = _log_softmax_below(loss) if loss.dim() == 0 else None
        if softs is not None and name not in _NLL:
            lower, src = self._below(softs[0], output)
            if src is not None and src is output.grad_fn:
                self.kind = "ce"
                self._linear_in_log_softmax(loss, softs, lower)
                return
        if loss.dim() != 0 or reduction not in (0, 1, 2):
            raise EngineError(
                "Curvature needs a scalar loss reduced by a mean or a sum from "
                "cross_entropy (class-index targets), mse_loss, huber_loss, "
                "smooth_l1_loss or binary_cross_entropy_with_logits (got "
                f"{name} with shape {tuple(loss.shape)})"
            )
        if name in _NLL and fn is not None:
            upper, soft = _walk(_only_input(fn), None, "LogSoftmaxBackward0")
            lower, src = self._below(soft, output) if soft is not None else ([], None)
            if src is not None and src is output.grad_fn:
                self.kind = "ce"
                self._ce(fn, soft, upper, lower, reduction, token_weight)
                return
        if name in _ELEMENTWISE and fn is not None:
            lower, src = _walk(fn.next_functions[0][0], output.grad_fn, "", True)
            if src is not None and src is output.grad_fn:
                if type(output.grad_fn).__name__ == "LogSoftmaxBackward0":
                    self.note = (
                        "GGN of the model's log-probabilities (the loss is not "
                        "linear in them): not its Hessian diagonal"
                    )
                self.kind = "diagonal"
                self._diagonal(fn, lower, reduction, token_weight)
                return
        raise EngineError(
            "Curvature needs loss = cross_entropy(model(x), y) (logits [B, C], "
            "or token logits [B, T, V] / [B, V, T], possibly reshaped), or "
            "mse_loss, huber_loss, smooth_l1_loss or "
            "binary_cross_entropy_with_logits of model(x) computed from the "
            f"model's output (reshaped, sliced or cast at most; got {name})"
        )

    def _below(self, soft: Any, output: Tensor) -> tuple[list[Any], Any]:
        """The nodes from ``soft``'s input down to the output, and the output's node.

        A model that ends with its log-softmax (``nn.LogSoftmax`` then
        ``nll_loss``): the passes start at the logits inside it instead, so the
        log-softmax belongs to the loss as in ``cross_entropy``.
        """
        _, found = _walk(output.grad_fn, soft, "")
        if found is soft:  # the output is (a rearrangement of) log p
            z_node, z_nr = soft.next_functions[0]
            self.start = GradientEdge(z_node, z_nr)
            self.like = soft._saved_result.detach()  # the logits' shape and dtype
            return [], output.grad_fn
        return _walk(_only_input(soft), output.grad_fn, "", True)

    def _diagonal(
        self, fn: Any, lower: list[Any], reduction: int, token_weight: Tensor | None
    ) -> None:
        """An elementwise loss: its Hessian per output element, reduced, pulled.

        Every weight the reduction gives an element (a mean's ``1/N``, a mask,
        per-element weights of ``reduction="none"`` losses) scales that
        element's curvature; the pull through reshapes, slices, casts and
        products with constants puts each on its output element (0 where an
        output is not in the loss).
        """
        h = element_curvature(fn)
        if reduction == 1:
            h = h / max(h.numel(), 1)
        if token_weight is not None:
            h = h * _nonnegative(token_weight.reshape(h.shape), "elements").to(h.dtype)
        # Square roots are the factors; pulled like gradients (a product with a
        # constant c scales the curvature by c²), then squared.
        root = _pull(lower, _nonnegative(h, "elements").sqrt()).detach()
        out = root.square()
        if out.shape != self.output.shape:
            raise EngineError(
                f"The loss's elements {tuple(h.shape)} do not map onto the model "
                f"output {tuple(self.output.shape)}"
            )
        self.h = out.reshape(out.shape[0], -1)  # [B, K]
        # Output elements outside the loss (all-zero curvature) need no pass.
        self.columns = [int(k) for k in self.h.ne(0).any(0).nonzero().reshape(-1)]
        self.count = len(self.columns)

    def _ce(
        self,
        fn: Any,
        soft: Any,
        upper: list[Any],
        lower: list[Any],
        reduction: int,
        token_weight: Tensor | None,
    ) -> None:
        logp = soft._saved_result.detach()  # log-probabilities, classes on ``dim``
        dim = soft._saved_dim % logp.dim()
        self._lower, self._dim, self._shape = lower, dim, logp.shape
        ignore = int(fn._saved_ignore_index)
        ignore = ignore - 2**64 if ignore >= 2**63 else ignore
        target = fn._saved_target
        nll_shape = fn._saved_self.shape
        counts = target != ignore
        # Each token's weight in the loss: its class weight, over the total
        # weight for the mean, times what the user's reduction gives it.
        tok_w = torch.ones(target.shape, dtype=torch.float64, device=target.device)
        class_weight = getattr(fn, "_saved_weight", None)
        if class_weight is not None:
            tok_w = class_weight.detach().double()[target.clamp(min=0)]
        if reduction == 1:
            total = float(fn._saved_total_weight.detach())
            tok_w = tok_w / (total if total > 0 else 1.0)
        if token_weight is not None:  # per-token losses reduced by the user
            tok_w = tok_w * token_weight.reshape(target.shape).double()
        tok_w = torch.where(counts, _nonnegative(tok_w, "tokens"), 0.0)
        counts = counts & (tok_w != 0)  # a zero weight masks the token out
        spread = tok_w.unsqueeze(1).expand(nll_shape).to(logp.dtype)
        # Every token's weight (0: not counted), as [M] in log_softmax's layout.
        weight = _pull(upper, spread).movedim(dim, -1)
        self.p = logp.movedim(dim, -1).reshape(-1, logp.shape[dim]).exp()  # [M, C]
        m = self.p.shape[0]
        tokens = weight.reshape(m, -1)[:, 0]
        self._own_tokens(tokens)

    def _linear_in_log_softmax(
        self, loss: Tensor, softs: list[Any], lower: list[Any]
    ) -> None:
        """A loss linear in ``log_softmax(z)`` (soft-label cross-entropy).

        ``L = Σ a·log p + const`` has the Hessian ``−(Σ_c a_c)(diag p − ppᵀ)``
        per token: its weight is ``−Σ_c a_c`` (``Σ_c t_c / N`` for probability
        targets), ``a`` the loss's gradient in the log-probabilities (summed
        over the log-softmax nodes of ``z``).
        """
        logp = softs[0]._saved_result.detach()
        dim = softs[0]._saved_dim % logp.dim()
        self._lower, self._dim, self._shape = lower, dim, logp.shape
        edges = [GradientEdge(soft, 0) for soft in softs]
        coefs = torch.autograd.grad(loss, edges, retain_graph=True)
        coef = functools.reduce(torch.add, coefs)
        self.p = logp.movedim(dim, -1).reshape(-1, logp.shape[dim]).exp()  # [M, C]
        tokens = -coef.detach().movedim(dim, -1).reshape(self.p.shape).sum(1)
        self._own_tokens(_nonnegative(tokens.double(), "tokens").to(tokens.dtype))

    def _own_tokens(self, tokens: Tensor) -> None:
        """Token weights [M] (0: not counted) -> factors, owners, passes."""
        logp_dtype = self.p.dtype
        m = self.p.shape[0]
        counted_tokens = tokens > 0
        self.root_weight = tokens.clamp(min=0).sqrt()[:, None].to(self.p.dtype)
        # Which sample each token belongs to: pull token ids to the output.
        ids = torch.arange(1, m + 1, dtype=torch.float64, device=self.p.device)
        for dtype in (logp_dtype, self.like.dtype):
            if not ids.to(dtype).double().equal(ids):
                raise EngineError(f"{m} tokens: too many to tell apart in {dtype}")
        # Only class 0 carries the id: M entries to scatter, not M·C.
        seed = torch.zeros_like(self.p)
        seed[:, 0] = ids.to(logp_dtype)
        where = self._to_output(seed, ids=True)
        b = where.shape[0]
        flat = where.reshape(b, -1).double()
        hit = flat > 0
        tok = flat[hit].long() - 1
        sample = torch.arange(b, device=self.p.device)[:, None].expand_as(flat)[hit]
        first = torch.full((m,), b, dtype=torch.long, device=self.p.device)
        last = torch.full((m,), -1, dtype=torch.long, device=self.p.device)
        first.scatter_reduce_(0, tok, sample, "amin")
        last.scatter_reduce_(0, tok, sample, "amax")
        if bool(((last >= 0) & (first != last)).any()):
            raise EngineError("a token's logits are spread over several samples")
        owner = last
        if bool((counted_tokens & (owner < 0)).any()):
            raise EngineError("some counted tokens' logits are not in the output")
        # Position of each counted token among its sample's counted tokens.
        group = torch.where(counted_tokens, owner, torch.full_like(owner, b))
        order = torch.argsort(group, stable=True)
        _, sizes = torch.unique_consecutive(group[order], return_counts=True)
        starts = torch.repeat_interleave(sizes.cumsum(0) - sizes, sizes)
        position = torch.empty_like(owner)
        position[order] = torch.arange(m, device=owner.device) - starts
        position[~counted_tokens] = -1
        self.position = position
        self.count = (int(position.max()) + 1) * self.p.shape[1]

    def _to_output(self, s: Tensor, ids: bool = False) -> Tensor:
        """``s`` [M, C] in log_softmax's layout -> a gradient of the model output.

        ``ids``: values to move, not to scale (token ids): scalings are skipped.
        """
        moved = s.reshape(*self._shape[: self._dim], *self._shape[self._dim + 1 :], -1)
        skip = _IDENTITY | _SCALE if ids else _IDENTITY
        return _pull(self._lower, moved.movedim(-1, self._dim), skip)

    def sampled(self, draws: int, gen: torch.Generator) -> Iterator[Tensor]:
        """Output gradients ``r`` with ``E[r rᵀ]`` = the loss Hessian (unscaled).

        Cross-entropy: ``r = p − e_ŷ`` per counted token with ``ŷ`` drawn from
        the model's own softmax (``E[r rᵀ] = diag(p) − ppᵀ``); MSE: Rademacher
        entries (``E[r rᵀ] = I``). Draws are independent between tokens, so the
        cross terms between tokens of one sample vanish in expectation and one
        pass seeds every token: the mean of ``Σ_n ĝ_n²`` over draws is an
        unbiased estimate of the GGN diagonal.
        """
        z = self.like
        for _ in range(draws):
            if self.kind == "diagonal":
                bits = torch.randint(0, 2, z.shape, generator=gen, device=z.device)
                signs = bits.to(self.h.dtype).reshape(self.h.shape) * 2 - 1
                yield (signs * self.h.sqrt()).reshape(z.shape).to(z.dtype)
                continue
            p = self.p
            # Inverse-CDF sampling: ~20× faster than torch.multinomial here.
            u = torch.rand(p.shape[0], 1, generator=gen, device=p.device)
            cdf = p.float().cumsum(1)
            labels = torch.searchsorted(cdf, u * cdf[:, -1:])
            labels = labels.clamp_max(p.shape[1] - 1)  # [M, 1]
            r = p.clone()
            r.scatter_add_(1, labels, -torch.ones_like(labels, dtype=p.dtype))
            r *= (self.position >= 0)[:, None].to(p.dtype) * self.root_weight
            yield self._to_output(r).to(z.dtype)

    def passes(self) -> Iterator[Tensor]:
        """Output gradients of the passes (unscaled)."""
        z = self.like
        if self.kind == "diagonal":
            root = self.h.sqrt()
            for k in self.columns:
                e = torch.zeros_like(root)
                e[:, k] = root[:, k]
                yield e.reshape(z.shape).to(z.dtype)
            return
        p = self.p
        classes = p.shape[1]
        eye = torch.eye(classes, dtype=p.dtype, device=p.device)
        for t in range(self.count // classes):
            rows = (self.position == t)[:, None].to(p.dtype) * self.root_weight
            for c in range(classes):
                s = rows * p[:, c : c + 1].sqrt() * (eye[c] - p)
                yield self._to_output(s).to(z.dtype)


def _loss_of_outputs(loss: Tensor, outputs: list[Tensor]) -> tuple[_Loss, Tensor]:
    """The loss factored at the first model output it is computed from.

    A model returning ``(aux, logits)`` or a dict: the loss may use any of them.
    """
    errors: list[EngineError] = []
    for candidate in outputs:
        try:
            return _Loss(loss, candidate), candidate
        except EngineError as exc:
            errors.append(exc)
    raise errors[0]


def diag_ggn(
    engine: HookEngine,
    loss: Tensor,
    notes: list[str] | None = None,
    seconds: float | None = None,
) -> dict[str, Tensor]:
    """GGN diagonal of ``loss`` per tracked parameter name (parameter shapes).

    Exact when it takes at most ``MAX_PASSES`` backward passes and, given a time
    allowance ``seconds``, when those passes fit in it (the first pass is timed
    before committing to them); otherwise the Monte-Carlo estimate from sampled
    passes: ``MC_DRAWS`` of them, or as many as fit in ``seconds``
    (``MC_DRAWS_MIN`` to ``MC_DRAWS_MAX``). A private generator per engine and
    device (seed 0) draws them, and a note appended to ``notes`` says so with
    the standard error of the estimate's trace (from the spread of the draws'
    traces).
    """
    output = engine.output
    if output is None or not engine.recorded:
        raise EngineError("The forward pass of this step was not recorded")
    if engine.earlier_outputs and _reaches(loss, engine.earlier_outputs):
        raise EngineError(
            f"{engine.forwards} forward passes of the model in grad mode were "
            "recorded this step (gradient accumulation?): the GGN diagonal is "
            "computed from one"
        )
    spec, output = _loss_of_outputs(loss, engine.outputs or [output])
    if spec.note is not None and notes is not None:
        notes.append(spec.note)
    if spec.count == 0:  # e.g. every Huber residual beyond δ: no curvature at all
        return {
            name: torch.zeros_like(layer.module.get_parameter(k)).detach()
            for layer in engine.layers
            for k, name in layer.names.items()
        }
    gen = engine.generators.get(output.device)
    if gen is None:
        gen = torch.Generator(output.device).manual_seed(0)
        engine.generators[output.device] = gen
    if spec.count > MAX_PASSES:
        why = f"the exact one needs {spec.count} > MAX_PASSES = {MAX_PASSES}"
        draws = MC_DRAWS
        if seconds is not None:
            first = time.perf_counter()
            one = _reduce(engine, spec, spec.sampled(1, gen), True)
            taken = time.perf_counter() - first
            draws = max(
                MC_DRAWS_MIN, min(MC_DRAWS_MAX, int(seconds / max(taken, 1e-9)))
            )
            return _sampled(engine, spec, gen, draws, notes, why, [one])
        return _sampled(engine, spec, gen, draws, notes, why, [])
    if seconds is None or spec.count <= 2 * MC_DRAWS_MIN:
        return _exact(engine, spec)
    first = time.perf_counter()
    one = _reduce(engine, spec, spec.sampled(1, gen), True)
    taken = time.perf_counter() - first
    if spec.count * taken <= seconds:
        return _exact(engine, spec)
    draws = max(MC_DRAWS_MIN, min(MC_DRAWS_MAX, int(seconds / max(taken, 1e-9))))
    why = (
        f"the exact one needs {spec.count} passes, {spec.count * taken:.3g} s "
        f"against the allowance of {seconds:.3g} s"
    )
    return _sampled(engine, spec, gen, draws, notes, why, [one])


def _exact(engine: HookEngine, spec: _Loss) -> dict[str, Tensor]:
    """The exact diagonal: every pass of ``spec``, the weights in the factors."""
    return _reduce(engine, spec, spec.passes(), False)[0]


def _sampled(
    engine: HookEngine,
    spec: _Loss,
    gen: torch.Generator,
    draws: int,
    notes: list[str] | None,
    why: str,
    done: list[tuple[dict[str, Tensor], Tensor]],
) -> dict[str, Tensor]:
    """Mean of ``draws`` one-pass estimates (``done`` ones given), and its note."""
    parts = [
        *done,
        *(
            _reduce(engine, spec, spec.sampled(1, gen), True)
            for _ in range(draws - len(done))
        ),
    ]
    traces = torch.stack([t for _, t in parts])
    out = {
        k: functools.reduce(torch.add, (d[k] for d, _ in parts)) / draws
        for k in parts[0][0]
    }
    mean = float(traces.mean())
    if notes is not None:
        error = "no error estimate from one draw"
        if draws > 1:
            se = float(traces.std() / math.sqrt(draws))
            rel = f" ({se / abs(mean):.1%})" if mean else ""
            error = f"standard error over the draws {se:.2g}{rel}"
        notes.append(
            f"estimate: Monte-Carlo GGN diagonal from {draws} sampled passes "
            f"({why}); its trace {mean:.4g}, {error}"
        )
    return {k: v.detach() for k, v in out.items()}


def _reduce(
    engine: HookEngine,
    spec: _Loss,
    passes: Iterator[Tensor],
    trace: bool,
) -> tuple[dict[str, Tensor], Tensor]:
    """``Σ_passes Σ_n ĝ_n²`` per parameter name, and its trace (with ``trace``)."""
    engine.reassign_unbatched()
    samples = {
        c.x.shape[0] for layer in engine.layers if layer.names for c in layer.calls
    }
    if samples and spec.like.shape[0] not in samples:
        # E.g. token logits flattened to [B·T, V] inside forward: the passes
        # below would square per-sequence sums over tokens (cross terms).
        raise EngineError(
            f"The model's output has {spec.like.shape[0]} rows but the batch has "
            f"{sorted(samples)[0]} samples: the exact GGN diagonal needs one output "
            "row per sample (token-level losses are not supported)"
        )
    params = [
        layer.module.get_parameter(k) for layer in engine.layers for k in layer.names
    ]
    recorded = [c for layer in engine.layers for c in layer.calls]
    outs = [
        c.out for c in recorded if c.out is not None and c.out._version == c.version
    ]
    if any(layer.rule.captures(layer.module) for layer in engine.layers if layer.calls):
        # Some statistics are exact only from gradients hooked inside the pass
        # (attention dropout, RNN states): backpropagate to the parameters.
        outs = []
    out: dict[str, Tensor] = {}
    # Layers whose Σ_n ĝ_n² is linear in b² (2-D Linear) accumulate Σ_c b_c² and
    # reduce once after all passes instead of once per pass.
    b_sq: dict[int, tuple[Tensor, Tensor]] = {}
    with CONV.caching():
        for s in passes:
            engine.clear_grads()
            if len(outs) == len(recorded):
                # Gradients w.r.t. the layer outputs are the b's; autograd then skips
                # every weight gradient, about half of a backward pass.
                bs = torch.autograd.grad(
                    spec.start,
                    outs,
                    grad_outputs=s,
                    retain_graph=True,
                    allow_unused=True,
                )
                for c, b in zip(recorded, bs, strict=True):
                    c.set_b(b)
            else:  # an output was modified in place: let the tensor hooks collect b
                torch.autograd.grad(
                    spec.start,
                    params,
                    grad_outputs=s,
                    retain_graph=True,
                    allow_unused=True,
                )
            for i, layer in enumerate(engine.layers):
                calls = [c for c in layer.calls if c.b is not None and layer.names]
                c0 = calls[0] if len(calls) == 1 else None
                if c0 is not None and c0.b is not None:
                    rule = layer.rule.bind(c0)
                    if rule.linear_in_b_squared(c0.x):
                        sq = c0.b.square()
                        b_sq[i] = (c0.x, b_sq[i][1] + sq if i in b_sq else sq)
                        continue
                    sgs = rule.sum_grad_squared(layer.module, c0.x, c0.b)
                else:  # a module called twice: sum per-sample gradients first
                    grads = StepStats.layer_grads(layer, calls)
                    sgs = {k: g.square().sum(0) for k, g in grads.items()}
                for k, v in sgs.items():
                    if k not in layer.names:  # served by another layer
                        continue
                    name = layer.names[k]
                    out[name] = out[name] + v if name in out else v
            # Tied tensors: their uses' per-sample gradients summed, then squared.
            for tie, calls in tied_layers(engine.ties, set(engine.uncovered)):
                for c in calls:  # one per forward pass
                    rule = tie.rule.bind(c)
                    for k, v in rule.sum_grad_squared(tie.module, c.x, c.x).items():
                        name = tie.names[k]
                        out[name] = out[name] + v if name in out else v
    for i, (x, sq) in b_sq.items():
        layer = engine.layers[i]
        sgs = layer.rule.sum_grad_squared_from_b_squared(layer.module, x, sq)
        for k, v in sgs.items():
            if k not in layer.names:  # served by another layer
                continue
            name = layer.names[k]
            out[name] = out[name] + v if name in out else v
    engine.clear_grads()
    total = (
        torch.stack([v.detach().double().sum() for v in out.values()]).sum()
        if trace and out
        else torch.zeros((), dtype=torch.float64)
    )
    return {k: v.detach() for k, v in out.items()}, total
