"""Tied weights served by the rules of the modules that share them.

A tensor owned by several modules (GPT-2's token embedding ``wte`` and its
``lm_head``) has per-sample gradients ``ĝ_n = Σ_modules ĝ_n^(module)``: each
module's rule gives its own use's share exactly. Norms, ``Σ_n ĝ_n²`` and
histograms need the sum before squaring, so a tie is one layer of its own
(``tied_layers``) whose rule adds its modules' per-sample gradients, a few
samples at a time. Every tie whose uses all have exact rules is served this
way (the whole-model re-run cost GPT-2's economy preset several plain steps);
the curvature passes square the same sums (``ggn_diagonal._reduce``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from glasscockpit.agent.engine.rules import LayerRule

if TYPE_CHECKING:
    from glasscockpit.agent.engine.hooks import Call, Layer

#: Per-sample gradient values of a tie built at a time (16 MiB float32).
MAX_ELEMENTS = 1 << 22


class TiedRule(LayerRule):
    """Per-sample gradients of a tied tensor: its modules' rules, summed."""

    label = "tied"
    needs_args = True  # a call is whole: its parts are other layers' calls

    def materialises(self, x: Tensor) -> bool:
        """The sum of several uses is built per sample."""
        del x
        return True

    def bind(self, call: Any) -> LayerRule:
        """The rule for one synthetic call (``tied_layers``)."""
        return _BoundTie(call)


class _BoundTie(LayerRule):
    """``TiedRule`` for one forward pass; ``call.cache["parts"]`` lists the uses."""

    def __init__(self, call: Call) -> None:
        self.call = call

    def _parts(self) -> Iterator[tuple[Layer, str, list[Call]]]:
        top, rows = self.call, None
        if top.parent is not None:
            top, rows = top.parent, top.rows
        for layer, key, calls in top.cache["parts"]:
            yield layer, key, [c if rows is None else c.part(rows) for c in calls]

    def _local(self) -> str:
        top = self.call.parent if self.call.parent is not None else self.call
        local: str = top.cache["local"]
        return local

    def batch_grads(self, module: nn.Module, x: Tensor, b: Tensor) -> dict[str, Tensor]:
        """``ĝ_n`` of the tie: every use's per-sample gradient, added."""
        del module, x, b
        return {self._local(): self._added("batch_grads")}

    def grad_sum(self, module: nn.Module, x: Tensor, b: Tensor) -> dict[str, Tensor]:
        """``Σ_n ĝ_n``: the uses' sums, added (no per-sample tensor)."""
        del module, x, b
        return {self._local(): self._added("grad_sum")}

    def _added(self, method: str) -> Tensor:
        """One statistic of every use of the tie (by its rule's ``method``), added."""
        total: Tensor | None = None
        for layer, key, calls in self._parts():
            for c in calls:
                assert c.b is not None
                rule = layer.rule.bind(c)
                g: Tensor = getattr(rule, method)(layer.module, c.x, c.b)[key]
                total = g if total is None else total + g
        assert total is not None
        return total

    def _chunks(self, module: nn.Module) -> Iterator[Tensor]:
        """``ĝ_n`` a few samples at a time."""
        local = self._local()
        n = self.call.x.shape[0]
        step = max(1, min(n, MAX_ELEMENTS // module.get_parameter(local).numel()))
        if step >= n or self.call.parent is not None:
            yield self.batch_grads(module, self.call.x, self.call.x)[local]
            return
        for s in range(0, n, step):
            part = self.call.part(slice(s, s + step))
            yield _BoundTie(part).batch_grads(module, part.x, part.x)[local]

    def batch_l2(self, module: nn.Module, x: Tensor, b: Tensor) -> dict[str, Tensor]:
        """``‖ĝ_n‖²`` chunk by chunk."""
        del x, b
        parts = [g.flatten(1).square().sum(1) for g in self._chunks(module)]
        return {self._local(): _cat(parts)}

    def batch_dot(
        self, module: nn.Module, x: Tensor, b: Tensor, grads: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """``ĝ_n · G`` chunk by chunk."""
        del x, b
        local = self._local()
        if local not in grads:
            return {}
        d = grads[local].reshape(-1)
        parts = [g.flatten(1) @ d.to(g.dtype) for g in self._chunks(module)]
        return {local: _cat(parts)}

    def sum_grad_squared(
        self, module: nn.Module, x: Tensor, b: Tensor
    ) -> dict[str, Tensor]:
        """``Σ_n ĝ_n²`` chunk by chunk."""
        del x, b
        total: Tensor | None = None
        for g in self._chunks(module):
            s = g.square().sum(0)
            total = s if total is None else total + s
        assert total is not None
        return {self._local(): total}


def _cat(parts: list[Tensor]) -> Tensor:
    import torch

    return parts[0] if len(parts) == 1 else torch.cat(parts)


TIED = TiedRule()


def tied_layers(
    ties: dict[str, list[tuple[Layer, str]]], skip: set[str]
) -> list[tuple[Layer, list[Call]]]:
    """One synthetic layer per tie, with one entry per forward pass that used it.

    Args:
        ties: tracked name -> ``(layer, local name)`` of every module using it.
        skip: names not served (not covered, or moved to another engine).
    """
    from glasscockpit.agent.engine.hooks import Call, Layer

    out: list[tuple[Layer, list[Call]]] = []
    for name, uses in ties.items():
        if name in skip:
            continue
        forwards = sorted(
            {c.forward for layer, _ in uses for c in layer.calls if c.b is not None}
        )
        owner, local = uses[0]
        tie = Layer(owner.module, TIED, {local: name})
        for f in forwards:
            parts = [
                (
                    layer,
                    key,
                    [c for c in layer.calls if c.forward == f and c.b is not None],
                )
                for layer, key in uses
            ]
            first = next(c for _, _, calls in parts for c in calls)
            call = Call(first.x, first.b, forward=f)
            call.cache["parts"] = [p for p in parts if p[2]]
            call.cache["local"] = local
            tie.calls.append(call)
        # One entry per forward pass, like the engine's layers: micro-batches
        # of gradient accumulation are different samples, never summed.
        out.extend((tie, [c]) for c in tie.calls)
    return out
