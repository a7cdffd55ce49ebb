"""The hook engine: records layer inputs and output gradients, only when armed.

Forward hooks on every covered module store the module's input and put a tensor
hook on its output, which receives the output gradient during backward. Nothing
else happens in the hooks: all reductions run after the backward pass, layer by
layer, so per-sample gradients exist for at most one layer at a time. When the
engine is not armed the forward hooks return after one attribute check, so
untracked steps pay nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from glasscockpit.agent.engine.rules import LayerRule, supports


class EngineError(RuntimeError):
    """Per-sample statistics are not available for this model or step."""


@dataclass
class Call:
    """One forward call of a covered module: its input and its output gradient."""

    x: Tensor
    b: Tensor | None = None
    #: The module's output and its version counter at the forward pass, so that
    #: curvature passes can differentiate with respect to it (if not modified
    #: in place since) and skip every weight gradient.
    out: Tensor | None = None
    version: int = 0


@dataclass
class Layer:
    """A covered module, its rule, and ``{local parameter name: tracked name}``."""

    module: nn.Module
    rule: LayerRule
    names: dict[str, str]
    calls: list[Call] = field(default_factory=list)


class HookEngine:
    """Records what the per-layer rules need, for every covered module of a model.

    Args:
        model: the network.
        params: the tracked ``(name, parameter)`` pairs.
    """

    def __init__(self, model: nn.Module, params: Sequence[tuple[str, nn.Parameter]]):
        self.model = model
        self.params = list(params)
        name_of = {id(p): n for n, p in self.params}
        self.layers: list[Layer] = []
        self.uncovered: list[str] = []
        seen: set[int] = set()
        self._handles: list[RemovableHandle] = []
        for module in model.modules():
            direct = [
                (k, p)
                for k, p in module.named_parameters(recurse=False)
                if id(p) in name_of
            ]
            if not direct:
                continue
            rule = supports(module)
            if rule is None or any(id(p) in seen for _, p in direct):
                self.uncovered.extend(name_of[id(p)] for _, p in direct)
                continue
            seen.update(id(p) for _, p in direct)
            layer = Layer(module, rule, {k: name_of[id(p)] for k, p in direct})
            self.layers.append(layer)
            self._handles.append(
                module.register_forward_hook(partial(self._on_forward, layer))
            )
        self._handles.append(model.register_forward_hook(self._on_output))
        self.recording = False
        #: The model's output of the recorded forward pass (for curvature passes).
        self.output: Tensor | None = None

    # -- state ---------------------------------------------------------------------
    def arm(self) -> None:
        """Record the next forward pass (and the backward passes through it)."""
        self.clear()
        self.recording = True

    def disarm(self) -> None:
        """Stop recording and drop everything recorded."""
        self.recording = False
        self.clear()

    def clear(self) -> None:
        """Drop recorded inputs, outputs and gradients."""
        for layer in self.layers:
            layer.calls.clear()
        self.output = None

    def clear_grads(self) -> None:
        """Forget output gradients but keep inputs, before another backward pass."""
        for layer in self.layers:
            for call in layer.calls:
                call.b = None

    def remove(self) -> None:
        """Remove every hook from the model."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.disarm()

    @property
    def backpropagated(self) -> bool:
        """Whether a backward pass already went through the recorded forward."""
        return any(c.b is not None for layer in self.layers for c in layer.calls)

    @property
    def recorded(self) -> bool:
        """Whether a forward pass was recorded since ``arm``."""
        return any(layer.calls for layer in self.layers)

    # -- hooks ---------------------------------------------------------------------
    def _on_forward(
        self, layer: Layer, module: nn.Module, inputs: tuple[Any, ...], output: Any
    ) -> None:
        del module
        if not self.recording or not torch.is_grad_enabled():
            return
        if not inputs or not isinstance(inputs[0], Tensor):
            return
        call = Call(inputs[0].detach())
        if isinstance(output, Tensor) and output.requires_grad:
            call.out, call.version = output, output._version
            output.register_hook(partial(_store_grad, call))  # type: ignore[no-untyped-call]
            layer.calls.append(call)

    def _on_output(
        self, module: nn.Module, inputs: tuple[Any, ...], output: Any
    ) -> None:
        del module, inputs
        if self.recording and torch.is_grad_enabled() and isinstance(output, Tensor):
            self.output = output

    # -- checks --------------------------------------------------------------------
    def check_model(self) -> None:
        """Raise ``EngineError`` if per-sample gradients are undefined or uncovered."""
        if self.uncovered:
            raise EngineError(
                "No per-sample rule for parameters "
                f"{self.uncovered[:8]}{' ...' if len(self.uncovered) > 8 else ''}; "
                "covered module types: nn.Linear, nn.Conv1d, nn.Conv2d (zero padding)"
            )
        for name, module in self.model.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
                raise EngineError(
                    f"BatchNorm {name!r} is in train mode: it mixes samples, so "
                    "per-sample gradients are undefined (use eval mode or GroupNorm)"
                )
        if not self.recorded:
            raise EngineError(
                "The forward pass of this step was not recorded: use consecutive "
                "step numbers, or open `cockpit.step(...)` before the forward pass"
            )


def _store_grad(call: Call, grad: Tensor) -> None:
    call.b = grad.detach()
