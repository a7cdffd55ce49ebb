"""Per-layer rules: per-sample statistics of one module from its input and output grad.

A rule sees one call of one module: the input ``x`` recorded in the forward pass and
the gradient ``b`` of the loss with respect to the module's output, received during
the backward pass. Everything here is in the loss's own scale: for a mean-reduced
loss, ``batch_grads`` returns ``ĝ_n = ∇ℓ_n / B`` (BackPACK's convention); the engine
rescales by ``B``.

A second implementation (e.g. a ``torch.func`` rule for modules without a closed
form) only has to subclass ``LayerRule`` and implement ``batch_grads``; the
reductions then fall back to building that one layer's per-sample gradients.
"""

from __future__ import annotations

import contextlib
import math
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812 - torch convention

from glasscockpit.agent.engine.conv_stats import conv_dots, ghost_is_cheaper, ghost_l2
from glasscockpit.agent.engine.scratch import SCRATCH


class LayerRule:
    """Per-sample statistics of one module type; reductions use ``batch_grads``."""

    #: Engine name reported in the coverage map (``Hello.meta["coverage"]``).
    label: ClassVar[str] = "rule"
    #: The rule needs every positional and keyword argument of the call, not
    #: only the first input (``bind`` receives them).
    needs_args: ClassVar[bool] = False
    #: The rule also serves the parameters of the module's descendants (e.g.
    #: ``nn.MultiheadAttention.out_proj``, which is never called as a module).
    claims_subtree: ClassVar[bool] = False

    def materialises(self, x: Tensor) -> bool:
        """Whether the reductions build ``[B, *shape]`` per-sample gradients."""
        del x
        return True

    def bind(self, call: Any) -> LayerRule:
        """This rule for one recorded call (rules that need its arguments)."""
        del call
        return self

    def accepts(self, module: nn.Module) -> bool:
        """Whether this rule handles this module's configuration."""
        del module
        return True

    def on_forward(
        self, call: Any, module: nn.Module, inputs: tuple[Any, ...], out: Tensor
    ) -> None:
        """Called on every recorded call after the forward pass (default: nothing).

        Args:
            call: the recorded ``hooks.Call``.
            module: the module.
            inputs: the call's positional arguments, not detached.
            out: the call's (first) output tensor, with its autograd graph.
        """
        del call, module, inputs, out

    def recorded(
        self, module: nn.Module, inputs: tuple[Any, ...], output: Any
    ) -> tuple[Tensor, Tensor] | None:
        """``(x, out)`` to record for a call, or None for the engine's default.

        The default is the first input tensor and the first output tensor with
        a batch axis; a rule whose module takes other structures (an RNN on a
        ``PackedSequence``) returns batch-first tensors of its own.
        """
        del module, inputs, output
        return None

    def output_grad(self, call: Any, grad: Tensor | None) -> Tensor | None:
        """``b`` from the gradient of the recorded output (default: itself)."""
        del call
        return grad

    def on_outputs(self, call: Any, output: Any) -> None:
        """Called on every recorded call with the module's whole output.

        Rules that read gradients of further outputs hook them here (default:
        nothing).
        """
        del call, output

    def captures(self, module: nn.Module) -> bool:
        """Whether statistics need gradients hooked in the backward beyond ``b``.

        The curvature passes then backpropagate to the parameters, so that the
        hooks see each pass.
        """
        del module
        return False

    def unscale(self, call: Any, old_b: Tensor, factor: Tensor | float) -> None:
        """Divide what the rule captured with ``b`` by the loss scale ``factor``.

        The call's ``b`` was ``old_b`` and is now divided (default: nothing).
        """
        del call, old_b, factor

    def batch_grads(self, module: nn.Module, x: Tensor, b: Tensor) -> dict[str, Tensor]:
        """Per-sample gradients ``{"weight": [B, *shape], ...}`` of one call.

        Rules with ``needs_args`` compute them only once bound to a recorded
        call (``bind``): the engine always binds them, so unbound use is a bug.
        """
        del module, x, b
        if self.needs_args:
            raise RuntimeError(
                f"{type(self).__name__} must be bound to a recorded call"
            )
        raise NotImplementedError

    def grad_sum(self, module: nn.Module, x: Tensor, b: Tensor) -> dict[str, Tensor]:
        """``Σ_n ĝ_n`` per parameter (equals ``.grad`` of a single call)."""
        return {k: g.sum(0) for k, g in self.batch_grads(module, x, b).items()}

    def batch_l2(self, module: nn.Module, x: Tensor, b: Tensor) -> dict[str, Tensor]:
        """``‖ĝ_n‖²`` per parameter, each ``[B]``."""
        return {
            k: g.flatten(1).square().sum(1)
            for k, g in self.batch_grads(module, x, b).items()
        }

    def batch_dot(
        self, module: nn.Module, x: Tensor, b: Tensor, grads: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """``ĝ_n · G`` per parameter for a direction ``G = grads[k]``, each ``[B]``."""
        return {
            k: g.flatten(1) @ grads[k].reshape(-1).to(g.dtype)
            for k, g in self.batch_grads(module, x, b).items()
        }

    def sum_grad_squared(
        self, module: nn.Module, x: Tensor, b: Tensor
    ) -> dict[str, Tensor]:
        """``Σ_n ĝ_n²`` per parameter, each of the parameter's shape."""
        return {k: g.square().sum(0) for k, g in self.batch_grads(module, x, b).items()}

    def linear_in_b_squared(self, x: Tensor) -> bool:
        """Whether ``Σ_n ĝ_n²`` depends on ``b`` only through ``b²``, elementwise."""
        del x
        return False

    def sum_grad_squared_from_b_squared(
        self, module: nn.Module, x: Tensor, b_sq: Tensor
    ) -> dict[str, Tensor]:
        """``Σ_n ĝ_n²`` from ``b²`` summed over passes (``linear_in_b_squared``)."""
        raise NotImplementedError


def _has(module: nn.Module, name: str) -> bool:
    p = getattr(module, name, None)
    return isinstance(p, nn.Parameter) and p.requires_grad


class LinearRule(LayerRule):
    """``nn.Linear``: closed forms for 2-D inputs (Goodfellow 2015), else per layer."""

    label = "linear-rule"

    def materialises(self, x: Tensor) -> bool:
        """Closed forms for 2-D inputs; sequences build per-sample gradients."""
        return x.dim() != 2

    def batch_grads(self, module: nn.Module, x: Tensor, b: Tensor) -> dict[str, Tensor]:
        """Weight ``[B, out, in]`` = Σ_t b_t a_tᵀ, bias ``[B, out]`` = Σ_t b_t."""
        x3, b3 = (
            x.reshape(x.shape[0], -1, x.shape[-1]),
            b.reshape(b.shape[0], -1, b.shape[-1]),
        )
        out: dict[str, Tensor] = {}
        if _has(module, "weight"):
            shape = (b3.shape[0], b3.shape[2], x3.shape[2])  # [B, out, in]
            if b3.dtype == x3.dtype:
                out["weight"] = torch.bmm(
                    b3.transpose(1, 2), x3, out=SCRATCH.empty(shape, b3)
                )
            else:  # let matmul report the mismatch
                out["weight"] = b3.transpose(1, 2) @ x3
        if _has(module, "bias"):
            out["bias"] = b3.sum(1)  # [B, out]
        return out

    def grad_sum(self, module: nn.Module, x: Tensor, b: Tensor) -> dict[str, Tensor]:
        """``bᵀa`` over all samples (and positions), like autograd."""
        x2, b2 = x.reshape(-1, x.shape[-1]), b.reshape(-1, b.shape[-1])
        out: dict[str, Tensor] = {}
        if _has(module, "weight"):
            out["weight"] = b2.t() @ x2
        if _has(module, "bias"):
            out["bias"] = b2.sum(0)
        return out

    def batch_l2(self, module: nn.Module, x: Tensor, b: Tensor) -> dict[str, Tensor]:
        """``‖a_n‖²‖b_n‖²`` for 2-D inputs: nothing of size B·out·in is built."""
        if x.dim() != 2:
            return super().batch_l2(module, x, b)
        bb = b.square().sum(1)  # [B]
        out: dict[str, Tensor] = {}
        if _has(module, "weight"):
            out["weight"] = x.square().sum(1) * bb
        if _has(module, "bias"):
            out["bias"] = bb
        return out

    def batch_dot(
        self, module: nn.Module, x: Tensor, b: Tensor, grads: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """``b_nᵀ G a_n`` for 2-D inputs: ``O(B·out·in)``, no per-sample tensor."""
        if x.dim() != 2:
            return super().batch_dot(module, x, b, grads)
        out: dict[str, Tensor] = {}
        if "weight" in grads and _has(module, "weight"):
            out["weight"] = ((b @ grads["weight"].to(b.dtype)) * x).sum(1)
        if "bias" in grads and _has(module, "bias"):
            out["bias"] = b @ grads["bias"].to(b.dtype)
        return out

    def sum_grad_squared(
        self, module: nn.Module, x: Tensor, b: Tensor
    ) -> dict[str, Tensor]:
        """``(b²)ᵀ(a²)`` for 2-D inputs."""
        if x.dim() != 2:
            return super().sum_grad_squared(module, x, b)
        return self.sum_grad_squared_from_b_squared(module, x, b.square())

    def linear_in_b_squared(self, x: Tensor) -> bool:
        """True for 2-D inputs: ``Σ_n ĝ_n² = (b²)ᵀ(a²)``."""
        return x.dim() == 2

    def sum_grad_squared_from_b_squared(
        self, module: nn.Module, x: Tensor, b_sq: Tensor
    ) -> dict[str, Tensor]:
        """``(b²)ᵀ(a²)`` and ``Σ_n b²``."""
        out: dict[str, Tensor] = {}
        if _has(module, "weight"):
            out["weight"] = b_sq.t() @ x.square()
        if _has(module, "bias"):
            out["bias"] = b_sq.sum(0)
        return out


class ConvRule(LayerRule):
    """``nn.Conv1d``/``nn.Conv2d`` with zero padding: per-sample weight gradients.

    Two exact ways to build ``ĝ_n`` of the weight, whose speed depends on the
    layer's shape (measured on one CPU thread: 1.3 vs 2.9 ms for 3→16 channels
    at 32×32, 2.1 vs 1.5 ms for 16→32 at 16×16, batch 64; F.unfold + bmm took 4.0
    and 5.2): the unfolded input (a strided view of the padded input, copied)
    contracted with ``b`` in one batched matrix product, or the convolution's own
    weight-gradient kernel with the samples as ``B·groups`` groups. On the CPU
    the first call of each layer shape times both and keeps the faster
    (``choice``); elsewhere the unfolded input is used.

    A 1-D convolution is unfolded as a 2-D one of height 1. Inside ``caching()``
    the unfolded input is kept per recorded input tensor: the GGN passes reduce
    the same inputs once per class, and unfolding dominated them.
    """

    label = "conv-rule"

    def __init__(self) -> None:
        self._cols: dict[int, tuple[weakref.ref[Tensor], Tensor]] = {}
        self._caching = False
        #: Per layer shape: True for the grouped weight-gradient kernel.
        self.choice: dict[tuple[Any, ...], bool] = {}
        #: Recorded inputs of calls whose norms come from Gram matrices.
        self._ghost: dict[int, weakref.ref[Tensor]] = {}

    @contextlib.contextmanager
    def caching(self) -> Iterator[None]:
        """Reuse unfolded inputs until the block ends (then free them)."""
        self._caching = True
        try:
            yield
        finally:
            self._caching = False
            self._cols.clear()

    def _unfold(self, module: nn.Conv1d | nn.Conv2d, x: Tensor) -> Tensor:
        """``F.unfold``'s ``[B, in·k, L]``: the input's windows as a strided view.

        A view: ``reshape(B, in·k, L)`` copies it (2–3× faster than F.unfold),
        all at once or a few samples at a time. Inside ``caching()`` the copy is
        returned and kept.
        """
        hit = self._cols.get(id(x))
        if hit is not None and hit[0]() is x:
            return hit[1]
        one_d = isinstance(module, nn.Conv1d)
        x4 = x.unsqueeze(2) if one_d else x
        kh, kw = (1, *module.kernel_size) if one_d else module.kernel_size
        dh, dw = (1, *module.dilation) if one_d else module.dilation
        sh, sw = (1, *module.stride) if one_d else module.stride
        pad = module.padding
        assert not isinstance(pad, str)  # accepts() refused strings
        ph, pw = (0, *pad) if one_d else pad
        if ph or pw:
            x4 = F.pad(x4, (pw, pw, ph, ph))
        n, c, h, w = x4.shape
        ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
        s = x4.stride()
        view = x4.as_strided(
            (n, c, kh, kw, ho, wo),
            (s[0], s[1], dh * s[2], dw * s[3], sh * s[2], sw * s[3]),
        )
        if not self._caching:
            return view
        cols = view.reshape(n, c * kh * kw, ho * wo)  # [B, in·k, L]
        key = id(x)
        ref = weakref.ref(x, lambda _: self._cols.pop(key, None))
        self._cols[key] = (ref, cols)
        return cols

    def accepts(self, module: nn.Module) -> bool:
        """Zero padding given as numbers ("same"/"valid" strings are not handled)."""
        return (
            isinstance(module, nn.Conv1d | nn.Conv2d)
            and module.padding_mode == "zeros"
            and not isinstance(module.padding, str)
        )

    def by_unfold(self, module: nn.Conv1d | nn.Conv2d, x: Tensor, b: Tensor) -> Tensor:
        """Weight ``ĝ_n`` from the unfolded input: batched matrix products.

        On the CPU the windows are copied a few samples at a time
        (``UNFOLD_CHUNK`` values): the copy stays in cache for the product, and
        no buffer of the whole batch's windows (7–9 MiB on the benchmark CNN)
        is allocated, returned to the system and faulted in again every step.
        """
        n, g = x.shape[0], module.groups
        cols = self._unfold(module, x)  # [B, in·k, L], or its strided view
        k = math.prod(cols.shape[1:4]) if cols.dim() > 3 else cols.shape[1]
        per_sample = k * b[0].numel() // module.out_channels
        chunked = cols.dim() > 3 and x.device.type == "cpu"  # a cache matters there
        step = max(1, UNFOLD_CHUNK // per_sample) if chunked else n
        bg = b.reshape(n, g, module.out_channels // g, -1)  # [B, g, out/g, L]
        # [B, g, in/g·k, out/g]: this operand order is the faster one for bmm.
        out = SCRATCH.empty((n, g, k // g, module.out_channels // g), b)
        for s in range(0, n, step):
            part = cols[s : s + step].reshape(-1, g, k // g, bg.shape[-1])
            torch.matmul(part, bg[s : s + step].transpose(2, 3), out=out[s : s + step])
        return out.transpose(2, 3).reshape(n, *module.weight.shape)

    @staticmethod
    def by_kernel(module: nn.Conv1d | nn.Conv2d, x: Tensor, b: Tensor) -> Tensor:
        """Weight ``ĝ_n`` from the convolution's weight-gradient kernel.

        Sample ``n``'s channels form groups of their own: the batch becomes one
        image of ``B·in`` channels in ``B·groups`` groups.
        """
        n, shape = x.shape[0], module.weight.shape
        pad = module.padding
        assert not isinstance(pad, str)  # accepts() refused strings
        # Only its shape is read (no input gradient is asked for): no copies.
        weight = x.new_empty(()).expand(n * shape[0], *shape[1:])
        grad: Tensor = torch.ops.aten.convolution_backward(
            b.reshape(1, n * b.shape[1], *b.shape[2:]),
            x.reshape(1, n * x.shape[1], *x.shape[2:]),
            weight,
            None,
            list(module.stride),
            list(pad),
            list(module.dilation),
            False,
            [0] * len(module.stride),
            n * module.groups,
            [False, True, False],
        )[1]
        return grad.reshape(n, *shape)

    def _use_kernel(self, module: nn.Conv1d | nn.Conv2d, x: Tensor, b: Tensor) -> bool:
        """Whether ``by_kernel`` is faster for this layer shape (timed once)."""
        if x.device.type != "cpu" or self._caching:
            return False
        key = (
            x.dtype,
            tuple(x.shape),
            tuple(b.shape),
            tuple(module.weight.shape),
            module.stride,
            module.padding,
            module.dilation,
            module.groups,
        )
        hit = self.choice.get(key)
        if hit is None:
            # The first round warms up allocations; the fastest of three others
            # is what a quiet machine gives (the others are noise).
            best = {False: math.inf, True: math.inf}
            for i in range(4):
                for kernel in (False, True):
                    t0 = time.perf_counter()
                    if kernel:
                        try:
                            self.by_kernel(module, x, b)
                        except RuntimeError:  # e.g. no such kernel for this dtype
                            continue
                    else:
                        self.by_unfold(module, x, b)
                    if i:
                        best[kernel] = min(best[kernel], time.perf_counter() - t0)
            hit = self.choice[key] = best[True] < best[False]
        return hit

    def on_forward(
        self, call: Any, module: nn.Module, inputs: tuple[Any, ...], out: Tensor
    ) -> None:
        """Note whether this call's norms are cheaper from Gram matrices."""
        del inputs
        assert isinstance(module, nn.Conv1d | nn.Conv2d)
        if ghost_is_cheaper(module, out):
            key = id(call.x)
            ref = weakref.ref(call.x, lambda _: self._ghost.pop(key, None))
            self._ghost[key] = ref

    def materialises(self, x: Tensor) -> bool:
        """Not where Gram matrices give the norms (``conv_stats``): deep layers.

        Elsewhere the per-sample gradients, built once, serve norms, dots and
        histograms alike.
        """
        hit = self._ghost.get(id(x))
        return hit is None or hit() is not x

    def _in_chunks(
        self, module: nn.Conv1d | nn.Conv2d, x: Tensor, b: Tensor
    ) -> Iterator[dict[str, Tensor]]:
        """``batch_grads`` a few samples at a time (``CONV_CHUNK`` values)."""
        step = max(1, CONV_CHUNK // module.weight.numel())
        for s in range(0, x.shape[0], step):
            yield self.batch_grads(module, x[s : s + step], b[s : s + step])

    def grad_sum(self, module: nn.Module, x: Tensor, b: Tensor) -> dict[str, Tensor]:
        """``Σ_n ĝ_n``: the convolution's own weight-gradient kernel, once."""
        assert isinstance(module, nn.Conv1d | nn.Conv2d)
        pad = module.padding
        assert not isinstance(pad, str)  # accepts() refused strings
        _, weight, bias = torch.ops.aten.convolution_backward(
            b,
            x,
            module.weight,
            [module.out_channels] if _has(module, "bias") else None,
            list(module.stride),
            list(pad),
            list(module.dilation),
            False,
            [0] * len(module.stride),
            module.groups,
            [False, _has(module, "weight"), _has(module, "bias")],
        )
        out: dict[str, Tensor] = {}
        if _has(module, "weight"):
            out["weight"] = weight
        if _has(module, "bias"):
            out["bias"] = bias
        return out

    def batch_l2(self, module: nn.Module, x: Tensor, b: Tensor) -> dict[str, Tensor]:
        """``‖ĝ_n‖²``: Gram matrices where cheaper, else per-sample gradients."""
        assert isinstance(module, nn.Conv1d | nn.Conv2d)
        n, out = x.shape[0], dict[str, Tensor]()
        b3 = b.reshape(n, b.shape[1], -1)
        if _has(module, "bias"):
            out["bias"] = b3.sum(2).square().sum(1)
        if not _has(module, "weight"):
            return out
        if ghost_is_cheaper(module, b):
            cols = self._unfold(module, x)
            cols = cols.reshape(n, -1, b3.shape[2])  # [B, in·k, L]
            out["weight"] = ghost_l2(cols, b3)
            return out
        parts = [
            g["weight"].flatten(1).square().sum(1)
            for g in self._in_chunks(module, x, b)
        ]
        out["weight"] = torch.cat(parts)
        return out

    def batch_dot(
        self, module: nn.Module, x: Tensor, b: Tensor, grads: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """``ĝ_n · G``: the convolution of ``x`` with ``G``, times ``b``."""
        assert isinstance(module, nn.Conv1d | nn.Conv2d)
        out: dict[str, Tensor] = {}
        if "weight" in grads and _has(module, "weight"):
            out["weight"] = conv_dots(module, x, b, [grads["weight"]])[0]
        if "bias" in grads and _has(module, "bias"):
            bias = b.reshape(x.shape[0], b.shape[1], -1).sum(2)
            out["bias"] = bias @ grads["bias"].to(bias.dtype)
        return out

    def sum_grad_squared(
        self, module: nn.Module, x: Tensor, b: Tensor
    ) -> dict[str, Tensor]:
        """``Σ_n ĝ_n²``: per-sample gradients, a few samples at a time."""
        assert isinstance(module, nn.Conv1d | nn.Conv2d)
        total: dict[str, Tensor] = {}
        for part in self._in_chunks(module, x, b):
            for k, g in part.items():
                sq = g.square().sum(0)
                total[k] = total[k] + sq if k in total else sq
        return total

    def batch_grads(self, module: nn.Module, x: Tensor, b: Tensor) -> dict[str, Tensor]:
        """Weight ``[B, out, in/groups, *kernel]``, bias ``[B, out]``."""
        assert isinstance(module, nn.Conv1d | nn.Conv2d)
        n, out = x.shape[0], dict[str, Tensor]()
        if _has(module, "weight"):
            if self._use_kernel(module, x, b):
                out["weight"] = self.by_kernel(module, x, b)
            else:
                out["weight"] = self.by_unfold(module, x, b)
        if _has(module, "bias"):
            out["bias"] = b.reshape(n, b.shape[1], -1).sum(2)
        return out


#: Per-sample gradient values a convolution's reductions build at a time.
CONV_CHUNK = 1 << 22
#: Unfolded input values ``ConvRule.by_unfold`` copies at a time (4 MiB float32).
UNFOLD_CHUNK = 1 << 20

LINEAR = LinearRule()
CONV = ConvRule()

#: Exact module type -> rule. Exact types only: a subclass may change ``forward``.
#: Another engine (e.g. torch.func for any module) registers here or replaces
#: ``supports``.
RULES: dict[type[nn.Module], LayerRule] = {
    nn.Linear: LINEAR,
    nn.Conv1d: CONV,
    nn.Conv2d: CONV,
}


#: Rules for classes not in ``RULES``: other libraries' layers, found without
#: importing them, and subclasses known to keep their base's math
#: (``foreign_rules``). Each returns the rule for a module, or None.
MATCHERS: list[Callable[[nn.Module], LayerRule | None]] = []


def supports(module: nn.Module) -> LayerRule | None:
    """The rule for this module, or None when no rule covers it."""
    rule = RULES.get(type(module))
    for match in MATCHERS:
        if rule is not None:
            break
        rule = match(module)
    return rule if rule is not None and rule.accepts(module) else None
