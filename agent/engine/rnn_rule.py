"""Exact per-sample rule for ``nn.LSTM`` and ``nn.GRU`` without ``vmap``.

Every weight of a recurrent layer enters through two linear maps per time step:
``g_i = x_t W_ihᵀ + b_ih`` and ``g_h = h_{t−1} W_hhᵀ + b_hh``. Per-sample
gradients of a linear map need its input and the gradient at its output, so the
rule re-runs the recurrence of the recorded call once, batched, in plain tensor
operations, with a zero leaf added to every ``g_i`` and ``g_h``, and
backpropagates the recorded output gradient ``b`` to those leaves:

* ``W_ih``: ``Σ_t ∂g_i,t x_tᵀ``, ``b_ih``: ``Σ_t ∂g_i,t``;
* ``W_hh``: ``Σ_t ∂g_h,t h_{t−1}ᵀ``, ``b_hh``: ``Σ_t ∂g_h,t``.

One batched re-run instead of a ``torch.func`` loop over samples (vmap has no
batching rule for the fused RNN kernels): ~10× faster on a small LSTM
classifier. The re-run is kept per call, so the curvature passes (other ``b``)
only backpropagate again.

Served: unidirectional, no ``proj_size``, no dropout between layers in train
mode; batch-first, sequence-first (recorded transposed) or ``PackedSequence``
inputs (padded, each sequence's state kept past its length). Everything else is
refused and served by the ``torch.func`` fallback. Besides the output sequence's
gradient ``b``, the gradients of the final states ``h_n`` (``c_n``) are hooked
(a classifier often reads only ``h_n[-1]``) and backpropagated from the re-run's
last states.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from glasscockpit.agent.engine.errors import EngineError
from glasscockpit.agent.engine.rules import RULES, LayerRule, _has


class RecurrentRule(LayerRule):
    """``nn.LSTM`` / ``nn.GRU``, unidirectional."""

    label = "rnn-rule"
    needs_args = True

    def accepts(self, module: nn.Module) -> bool:
        """Only configurations the re-run below reproduces."""
        return (
            type(module) in (nn.LSTM, nn.GRU)
            and isinstance(module, nn.RNNBase)
            and not module.bidirectional
            and module.proj_size == 0
            and (module.dropout == 0.0 or module.num_layers == 1)
        )

    def bind(self, call: Any) -> LayerRule:
        """The rule for one call (re-runs its recurrence once, lazily)."""
        return _BoundRecurrent(call)

    def recorded(
        self, module: nn.Module, inputs: tuple[Any, ...], output: Any
    ) -> tuple[Tensor, Tensor] | None:
        """Batch-first tensors for packed and sequence-first calls.

        A ``PackedSequence`` call records its padded input and packed output
        (``output_grad`` pads the gradient to ``[B, T, H]``; the re-run masks each
        sequence's steps beyond its length); a sequence-first call its input
        transposed (``output_grad`` transposes ``b``).
        """
        if not (inputs and isinstance(output, tuple) and len(output) == 2):
            return None
        first, seq = inputs[0], output[0]
        if isinstance(first, PackedSequence) and isinstance(seq, PackedSequence):
            padded, _ = pad_packed_sequence(first, batch_first=True)
            return padded, seq.data
        if (
            isinstance(first, Tensor)
            and isinstance(seq, Tensor)
            and first.dim() == 3
            and not getattr(module, "batch_first", True)
        ):
            # Sequence-first [T, B, F]: recorded batch-first, b transposed back.
            return first.transpose(0, 1), seq
        return None

    def on_forward(
        self, call: Any, module: nn.Module, inputs: tuple[Any, ...], out: Tensor
    ) -> None:
        """Keep a packed call's layout (lengths, order), or its sequence-first axis."""
        del out
        packed = inputs[0] if inputs else None
        if isinstance(packed, Tensor) and not getattr(module, "batch_first", True):
            call.cache["seq_first"] = True
        if isinstance(packed, PackedSequence):
            _, lengths = pad_packed_sequence(packed, batch_first=True)
            call.cache["packed"] = (
                packed.batch_sizes,
                packed.sorted_indices,
                packed.unsorted_indices,
                lengths,
                call.x.shape[1],
            )

    def output_grad(self, call: Any, grad: Tensor | None) -> Tensor | None:
        """The packed output's gradient padded to ``[B, T, H]`` (zeros beyond)."""
        if grad is None:
            return None
        layout = call.cache.get("packed")
        if layout is None:
            # Sequence-first calls record x batch-first; b follows.
            return grad.transpose(0, 1) if call.cache.get("seq_first") else grad
        sizes, order, unorder, _, steps = layout
        packed = PackedSequence(grad, sizes, order, unorder)
        return pad_packed_sequence(packed, batch_first=True, total_length=steps)[0]

    def on_outputs(self, call: Any, output: Any) -> None:
        """Hook the final states ``h_n`` (``c_n``): a model may read them only.

        Their gradients are kept in ``call.cache["state_grads"]``; a call whose
        output sequence gets no gradient gets a zero ``b``.
        """
        if not isinstance(output, tuple) or len(output) != 2:
            return
        seq, state = output
        if isinstance(seq, PackedSequence) or call.cache.get("seq_first"):
            hidden = seq.data.shape[-1] if isinstance(seq, PackedSequence) else None
            hidden = hidden if hidden is not None else seq.shape[-1]
            seq = call.x.new_zeros(*call.x.shape[:2], hidden)  # b's batch-first shape
        if not isinstance(seq, Tensor) or seq.dim() != 3:
            return
        states = state if isinstance(state, tuple) else (state,)
        for name, t in zip(("h", "c"), states, strict=False):
            if isinstance(t, Tensor) and t.requires_grad:
                t.register_hook(partial(_store_state, call, seq, name))  # type: ignore[no-untyped-call]

    def captures(self, module: nn.Module) -> bool:
        """``h_n``'s gradient is hooked: the curvature passes must reach it."""
        return isinstance(module, nn.RNNBase)

    def unscale(self, call: Any, old_b: Tensor, factor: Tensor | float) -> None:
        """The captured state gradients carry the loss scale like ``b``."""
        del old_b  # the states are not keyed by it: cleared before each pass
        grads = call.cache.get("state_grads")
        if grads:
            call.cache["state_grads"] = {k: g / factor for k, g in grads.items()}


class _BoundRecurrent(LayerRule):
    def __init__(self, call: Any) -> None:
        self.call = call

    def _rerun(self, module: nn.RNNBase, x: Tensor) -> dict[str, Any]:
        """The batched recurrence with zero leaves on every linear map (cached)."""
        cache: dict[str, Any] = self.call.cache
        if "rnn" in cache:
            return dict(cache["rnn"])
        if x.dim() != 3:
            raise EngineError(
                f"{type(module).__name__} on a {x.dim()}-D input: the recurrent "
                "rule needs [batch, time, features]"
            )
        lstm = isinstance(module, nn.LSTM)
        n, t, _ = x.shape
        hidden = module.hidden_size
        h0, c0 = _initial_state(self.call, lstm, module.num_layers, n, hidden, x)
        last_h: list[Tensor] = []
        last_c: list[Tensor] = []
        root = self.call.parent if self.call.parent is not None else self.call
        rows = self.call.rows if self.call.parent is not None else slice(None)
        layout = root.cache.get("packed")
        # Packed calls: a sequence's state stops changing after its length.
        mask = (
            None
            if layout is None
            else torch.arange(t, device=x.device)[None, :]
            < layout[3][rows].to(x.device)[:, None]
        )
        leaves: list[Tensor] = []
        inputs: list[Tensor] = []  # per layer: its input and previous hidden states
        prevs: list[Tensor] = []
        seq = x
        with torch.enable_grad():
            for layer in range(module.num_layers):
                w_ih = getattr(module, f"weight_ih_l{layer}").detach()
                w_hh = getattr(module, f"weight_hh_l{layer}").detach()
                b_ih = getattr(module, f"bias_ih_l{layer}", None)
                b_hh = getattr(module, f"bias_hh_l{layer}", None)
                gi = seq @ w_ih.T
                if b_ih is not None:
                    gi = gi + b_ih.detach()
                zi = torch.zeros_like(gi, requires_grad=True)
                zh = torch.zeros_like(gi, requires_grad=True)  # [B, T, G]
                gi = gi + zi
                h, c = h0[layer], c0[layer] if c0 is not None else None
                outs, before = [], []
                for step in range(t):
                    before.append(h)
                    c_prev = c
                    gh = h @ w_hh.T
                    if b_hh is not None:
                        gh = gh + b_hh.detach()
                    gh = gh + zh[:, step]
                    if lstm:
                        assert c is not None
                        i, f, g, o = (gi[:, step] + gh).chunk(4, 1)
                        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                        h = torch.sigmoid(o) * torch.tanh(c)
                    else:
                        ri, zi_, ni = gi[:, step].chunk(3, 1)
                        rh, zh_, nh = gh.chunk(3, 1)
                        r = torch.sigmoid(ri + rh)
                        z = torch.sigmoid(zi_ + zh_)
                        new = torch.tanh(ni + r * nh)
                        h = (1 - z) * new + z * h
                    if mask is not None:  # keep finished sequences' states
                        keep = mask[:, step, None]
                        h = torch.where(keep, h, before[-1])
                        if c is not None and c_prev is not None:
                            c = torch.where(keep, c, c_prev)
                    outs.append(h)
                leaves += [zi, zh]
                last_h.append(h)
                if c is not None:
                    last_c.append(c)
                inputs.append(seq.detach())
                prevs.append(torch.stack(before, 1).detach())
                seq = torch.stack(outs, 1)
        out = {
            "leaves": leaves,
            "inputs": inputs,
            "prevs": prevs,
            "output": seq,
            "h": last_h,
            "c": last_c,
        }
        cache["rnn"] = out
        return dict(out)

    def batch_grads(self, module: nn.Module, x: Tensor, b: Tensor) -> dict[str, Tensor]:
        """``weight_ih_l{k}``, ``weight_hh_l{k}``, biases: ``[B, *shape]``."""
        assert isinstance(module, nn.RNNBase)
        run = self._rerun(module, x)
        output: Tensor = run["output"]
        if b.shape != output.shape:
            raise EngineError(
                f"{type(module).__name__}: output gradient {tuple(b.shape)} does not "
                f"match the re-run's output {tuple(output.shape)}"
            )
        ends, seeds = [output], [b.to(output.dtype)]
        root = self.call.parent if self.call.parent is not None else self.call
        rows = self.call.rows if self.call.parent is not None else slice(None)
        states: dict[str, Tensor] = root.cache.get("state_grads") or {}
        if b is not self.call.b and states:
            # The states' gradients belong to the recorded b only.
            raise EngineError(
                f"{type(module).__name__}: the final states' gradients are known "
                "for the recorded output gradient only"
            )
        for name, grad in states.items():  # [layers, B, H], batch on axis 1
            for end, g in zip(run[name], grad[:, rows].unbind(0), strict=True):
                ends.append(end)
                seeds.append(g.to(end.dtype))
        grads = torch.autograd.grad(ends, run["leaves"], seeds, retain_graph=True)
        out: dict[str, Tensor] = {}
        for layer in range(module.num_layers):
            dgi, dgh = grads[2 * layer], grads[2 * layer + 1]
            seq, prev = run["inputs"][layer], run["prevs"][layer]
            for name, d, a in (("ih", dgi, seq), ("hh", dgh, prev)):
                if _has(module, f"weight_{name}_l{layer}"):
                    out[f"weight_{name}_l{layer}"] = d.transpose(1, 2) @ a
                if _has(module, f"bias_{name}_l{layer}"):
                    out[f"bias_{name}_l{layer}"] = d.sum(1)
        return out


def _initial_state(
    call: Any, lstm: bool, layers: int, n: int, hidden: int, x: Tensor
) -> tuple[list[Tensor], list[Tensor] | None]:
    """``h0`` (and ``c0``) per layer, ``[B, H]``: the call's ``hx`` or zeros."""
    root = call.parent if call.parent is not None else call
    rows = call.rows if call.parent is not None else slice(None)
    hx = root.args[1] if len(root.args) > 1 else root.kwargs.get("hx")
    zeros = [x.new_zeros(n, hidden) for _ in range(layers)]
    if hx is None:
        return zeros, (
            [x.new_zeros(n, hidden) for _ in range(layers)] if lstm else None
        )
    if lstm:  # [layers, B, H]: the batch on axis 1
        h, c = hx
        return list(h.detach()[:, rows].unbind(0)), list(c.detach()[:, rows].unbind(0))
    return list(hx.detach()[:, rows].unbind(0)), None


def _store_state(call: Any, seq: Tensor, name: str, grad: Tensor) -> None:
    """Tensor hook on ``h_n`` / ``c_n``: keep the gradient; b = 0 until it comes."""
    call.cache.setdefault("state_grads", {})[name] = grad.detach()
    if call.b is None:  # the output sequence's own hook overwrites it if it fires
        call.set_b(torch.zeros_like(seq, memory_format=torch.contiguous_format))


RECURRENT = RecurrentRule()
RULES[nn.LSTM] = RECURRENT
RULES[nn.GRU] = RECURRENT
