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

Served: batch-first, unidirectional, no ``proj_size``, no dropout between layers
in train mode, 3-D input tensors. Everything else is refused and served by the
``torch.func`` fallback. The rule sees only the gradient of the first output (the
output sequence); a model that reads ``h_n`` fails the engine's sum check and is
moved to the whole-model re-run.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from glasscockpit.agent.engine.errors import EngineError
from glasscockpit.agent.engine.rules import RULES, LayerRule, _has


class RecurrentRule(LayerRule):
    """``nn.LSTM`` / ``nn.GRU``, batch-first and unidirectional."""

    label = "rnn-rule"
    needs_args = True

    def accepts(self, module: nn.Module) -> bool:
        """Only configurations the re-run below reproduces."""
        return (
            type(module) in (nn.LSTM, nn.GRU)
            and isinstance(module, nn.RNNBase)
            and module.batch_first
            and not module.bidirectional
            and module.proj_size == 0
            and (module.dropout == 0.0 or module.num_layers == 1)
        )

    def bind(self, call: Any) -> LayerRule:
        """The rule for one call (re-runs its recurrence once, lazily)."""
        return _BoundRecurrent(call)

    def batch_grads(self, module: nn.Module, x: Tensor, b: Tensor) -> dict[str, Tensor]:
        """Unbound use is a bug: the engine always binds rules that need args."""
        del module, x, b
        raise RuntimeError("RecurrentRule must be bound to a recorded call")


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
                    outs.append(h)
                leaves += [zi, zh]
                inputs.append(seq.detach())
                prevs.append(torch.stack(before, 1).detach())
                seq = torch.stack(outs, 1)
        out = {"leaves": leaves, "inputs": inputs, "prevs": prevs, "output": seq}
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
        grads = torch.autograd.grad(
            output, run["leaves"], b.to(output.dtype), retain_graph=True
        )
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
    hx = call.args[1] if len(call.args) > 1 else call.kwargs.get("hx")
    zeros = [x.new_zeros(n, hidden) for _ in range(layers)]
    if hx is None:
        return zeros, (
            [x.new_zeros(n, hidden) for _ in range(layers)] if lstm else None
        )
    if lstm:
        h, c = hx
        return list(h.detach().unbind(0)), list(c.detach().unbind(0))
    return list(hx.detach().unbind(0)), None


RECURRENT = RecurrentRule()
RULES[nn.LSTM] = RECURRENT
RULES[nn.GRU] = RECURRENT
