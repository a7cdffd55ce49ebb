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
from torch.nn.utils import parametrize
from torch.utils.hooks import RemovableHandle

# Imported for their side effect: they add their rules to ``RULES``.
from glasscockpit.agent.engine import (  # noqa: F401
    attention_rule,
    batch_axes,
    foreign_rules,
    norm_rules,
    rnn_rule,
)
from glasscockpit.agent.engine.errors import EngineError as EngineError
from glasscockpit.agent.engine.func_rule import (
    FUNC_RULES,
    REENTRY,
    FuncRule,
    ModelRule,
    _first_tensor,
)
from glasscockpit.agent.engine.norm_rules import EmbeddingRule
from glasscockpit.agent.engine.rules import LayerRule, supports


@dataclass
class Call:
    """One forward call of a covered module: its input and its output gradient."""

    x: Tensor
    b: Tensor | None = None
    #: All arguments of the call, for rules that re-run the module
    #: (``LayerRule.needs_args``); empty otherwise.
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: Rule-specific intermediate results of this call (e.g. attention's re-run).
    cache: dict[str, Any] = field(default_factory=dict)
    #: The module's output and its version counter at the forward pass, so that
    #: curvature passes can differentiate with respect to it (if not modified
    #: in place since) and skip every weight gradient.
    out: Tensor | None = None
    version: int = 0
    #: Machine epsilon of the output gradient as autograd produced it (bf16/fp16
    #: under autocast): sets how closely per-sample sums must match ``.grad``.
    eps: float = 0.0
    #: Which of the step's forward passes of the model made this call: the
    #: micro-batches of gradient accumulation are different samples.
    forward: int = 0
    #: A call cut from another (``part``): its samples ``rows`` of ``parent``,
    #: whose captures (``cache``) rules read for those rows.
    parent: Call | None = None
    rows: slice | None = None
    #: Where the samples were in the module's input and output (moved to the
    #: front in ``x`` and ``b``; ``batch_axes``), 0 if they were there already.
    axis: int = 0

    def move_batch_axis(self, axis: int) -> None:
        """Put the samples, found on ``axis`` of input and output, first."""
        if axis == 0 or self.axis:
            return
        self.axis = axis
        self.x = self.x.movedim(axis, 0)
        if self.b is not None:
            self.b = self.b.movedim(axis, 0)

    def set_b(self, grad: Tensor | None) -> None:
        """Store the output gradient; under autocast, ``x`` and it in one dtype."""
        if grad is None:
            self.b = None
            return
        b = grad.detach()
        if self.axis:
            b = b.movedim(self.axis, 0)
        if b.is_floating_point():
            self.eps = max(self.eps, torch.finfo(b.dtype).eps)
        if (
            b.dtype != self.x.dtype
            and b.is_floating_point()
            and self.x.is_floating_point()
        ):
            # A bf16/fp16 output of a float32 input. The rules run after the
            # backward pass, outside autocast: both in the wider type.
            wide = torch.promote_types(b.dtype, self.x.dtype)
            b, self.x = b.to(wide), self.x.to(wide)
        self.b = b

    def part(self, rows: slice, batched_kwargs: frozenset[str] = frozenset()) -> Call:
        """The same call restricted to samples ``rows`` (no output kept)."""
        n = self.x.shape[0]

        cuts: dict[int, Tensor] = {}

        def cut(v: Any) -> Any:
            if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == n:
                if id(v) not in cuts:  # keep identity between arguments
                    cuts[id(v)] = v[rows]
                return cuts[id(v)]
            return v

        return Call(
            self.x[rows],
            None if self.b is None else self.b[rows],
            tuple(cut(a) for a in self.args),
            {k: cut(v) if k in batched_kwargs else v for k, v in self.kwargs.items()},
            forward=self.forward,
            parent=self,
            rows=rows,
        )


@dataclass
class Layer:
    """A covered module, its rule, and ``{local parameter name: tracked name}``."""

    module: nn.Module
    rule: LayerRule
    names: dict[str, str]
    calls: list[Call] = field(default_factory=list)


class HookEngine:
    """Records what the per-layer rules need, for every covered module of a model.

    Engine choice is per module, at attach time: a closed-form rule from
    ``RULES`` (exact module types), else a ``torch.func`` fallback re-running that
    module alone (``func_rule.FuncRule``). Parameters owned by the model itself,
    shared by several modules (tied weights), or found at the first tracked step
    to be used outside their module (``reassign``) are served by a fallback that
    re-runs the whole model from its recorded input and output gradient. A
    model whose modules all have rules uses the rules only.

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
        #: Tracked parameter name -> engine label or "not covered: <reason>".
        self.coverage: dict[str, str] = {}
        #: Forward hooks, attached only while armed: a module with hooks takes
        #: the slow call path, which untracked steps should not pay.
        self._hooks: list[tuple[nn.Module, Any]] = []
        self._handles: list[RemovableHandle] = []
        owners: dict[int, int] = {}
        for module in model.modules():
            for _, p in module.named_parameters(recurse=False):
                if id(p) in name_of:
                    owners[id(p)] = owners.get(id(p), 0) + 1
        shared = {pid for pid, count in owners.items() if count > 1}
        # The whole-model fallback: always recorded when armed (a few
        # references), so that ``reassign`` can serve parameters at once.
        root_rule = ModelRule(label="torch.func (whole model)")
        self._root_refusal = root_rule.refuse(model)
        self.root = Layer(model, root_rule, {})
        #: Tied tensors served by their modules' rules, summed (``tie_rule``):
        #: tracked name -> ``(layer, local name)`` of each module using it.
        self.ties: dict[str, list[tuple[Layer, str]]] = {}
        # Ties whose every use has an exact rule: the uses' per-sample gradients,
        # summed, are exact and far cheaper than re-running the whole model.
        tie_ids = self._tie_ids(shared)
        root_params: list[str] = [name_of[pid] for pid in shared - tie_ids]
        # Parameters their own module cannot serve, with the reason: the whole-
        # model fallback serves them if it can (else they are not covered).
        refused: list[tuple[list[str], str]] = []
        claimed: set[int] = set()
        for module in model.modules():
            if id(module) in claimed:
                continue
            rule: LayerRule | None = supports(module)
            if rule is None and type(module) in FUNC_RULES:
                rule = FUNC_RULES[type(module)]()
            recurse = rule is not None and rule.claims_subtree
            direct = [
                (k, p)
                for k, p in module.named_parameters(recurse=recurse)
                if id(p) in name_of and id(p) not in shared
            ]
            tied = [
                (k, p)
                for k, p in module.named_parameters(recurse=False)
                if id(p) in tie_ids
            ]
            if recurse:
                claimed.update(id(m) for m in module.modules())
            if not direct and not tied:
                continue
            if rule is None and module is model:
                root_params.extend(name_of[id(p)] for _, p in direct)
                continue
            if isinstance(module, parametrize.ParametrizationList):
                refused.append(
                    (
                        [name_of[id(p)] for _, p in direct],
                        "the original of a parametrized tensor "
                        "(torch.nn.utils.parametrize), used outside this module's "
                        "forward",
                    )
                )
                continue
            if rule is None:
                rule = FuncRule(label=f"torch.func ({type(module).__name__})")
            why = rule.refuse(module) if isinstance(rule, FuncRule) else None
            if why is not None:
                refused.append(([name_of[id(p)] for _, p in direct], why))
                continue
            if isinstance(rule, FuncRule):
                rule.names = [k for k, _ in direct]
            layer = Layer(module, rule, {k: name_of[id(p)] for k, p in direct})
            for k, p in tied:
                self.ties.setdefault(name_of[id(p)], []).append((layer, k))
            self.coverage.update(dict.fromkeys(layer.names.values(), _label(rule)))
            self.layers.append(layer)
            self._hooks.append((module, partial(self._on_forward, layer)))
        self.layers.append(self.root)
        for name, uses in self.ties.items():
            self.coverage[name] = (
                "tied: "
                + " + ".join(_label(layer.rule) for layer, _ in uses)
                + ", per-sample gradients summed"
            )
        self._hooks.append((model, partial(self._on_forward, self.root)))
        self.reassign(root_params, "owned by the model itself or shared (tied)")
        for names, why in refused:
            self.reassign(names, why)
        self.coverage = {n: self.coverage[n] for n, _ in self.params}
        self.recording = False
        self._removed = False
        #: Private generators of sampled curvature passes, per device.
        self.generators: dict[torch.device, torch.Generator] = {}
        #: The model's output of the recorded forward pass (for curvature passes).
        self.output: Tensor | None = None
        #: Every tensor of that output with a batch axis, ``output`` first: the
        #: curvature passes start at the one the loss is computed from.
        self.outputs: list[Tensor] = []
        #: Graph nodes of the earlier forward passes' outputs (this step).
        self.earlier_outputs: list[Any] = []
        #: Forward passes of the model in grad mode recorded since ``arm``.
        self.forwards = 0
        #: Samples in the model input of the forward pass being recorded.
        self._batch = 0
        #: ``batch_axes`` decisions per shape signature of the model's input.
        self.batch_decisions: dict[Any, batch_axes.Decision] = {}

    def _tie_ids(self, shared: set[int]) -> set[int]:
        """Shared tensors whose every owner has a rule: served as ties."""
        owners: dict[int, list[nn.Module]] = {}
        for module in self.model.modules():
            for _, p in module.named_parameters(recurse=False):
                if id(p) in shared:
                    owners.setdefault(id(p), []).append(module)
        out = set()
        for pid, modules in owners.items():
            rules = [supports(m) for m in modules]
            if all(
                r is not None and not r.claims_subtree and not isinstance(r, FuncRule)
                for r in rules
            ):
                out.add(pid)
        return out

    def _not_covered(self, names: list[str], why: str) -> None:
        for n in names:
            self.ties.pop(n, None)
        self.uncovered.extend(n for n in names if n not in self.uncovered)
        self.coverage.update(dict.fromkeys(names, f"not covered: {why}"))

    def reassign_unbatched(self) -> None:
        """Find each layer's batch axis; layers without a usable one to the model.

        The model's own input defines the batch; ``batch_axes`` follows it to
        every covered module (sequence-first inputs are served with the axis
        moved). A module called on a tensor without the batch axis
        (``pos(torch.arange(T))`` broadcast over the batch) gets gradients
        already summed over samples: only re-running the whole model can split
        them.

        Raises:
            EngineError: when the samples' axis cannot be known.
        """
        if not self.root.calls:
            return
        batch_axes.resolve(self)
        n = self.root.calls[0].x.shape[0]
        for layer in self.layers:
            if layer is self.root or not layer.names:
                continue
            sizes = {c.x.shape[0] for c in layer.calls}
            if sizes and sizes != {n}:
                self.reassign(
                    list(layer.names.values()),
                    f"its module's input has {sorted(sizes)[0]} rows, the batch "
                    f"{n} samples (called on a tensor without the batch axis?)",
                )

    def drop(self, layer: Layer, why: str) -> None:
        """Stop serving the parameters of ``layer``; report them as not covered."""
        self._not_covered(list(layer.names.values()), why)
        layer.names.clear()
        if isinstance(layer.rule, FuncRule):
            layer.rule.names.clear()

    def reassign(self, names: list[str], why: str) -> None:
        """Serve ``names`` by re-running the whole model (or mark them uncovered).

        Args:
            names: tracked parameter names, removed from the layers serving them.
            why: why their own module's rule cannot serve them.
        """
        if not names:
            return
        for n in names:
            self.ties.pop(n, None)
        for layer in self.layers:
            for k in [k for k, n in layer.names.items() if n in names]:
                del layer.names[k]
                if isinstance(layer.rule, FuncRule):
                    layer.rule.names.remove(k)
        if self._root_refusal is not None:
            self._not_covered(
                names, f"{why}; whole-model fallback: {self._root_refusal}"
            )
            return
        assert isinstance(self.root.rule, FuncRule)
        for n in names:
            self.root.names[n] = n
            self.root.rule.names.append(n)
        self.coverage.update(
            dict.fromkeys(names, f"{self.root.rule.label_text}: {why}")
        )

    # -- state ---------------------------------------------------------------------
    def arm(self) -> None:
        """Record the next forward pass (and the backward passes through it)."""
        self.clear()
        self.recording = True
        if not self._handles and not self._removed:
            # Under torch.compile the hooks run eagerly (a graph break), as
            # recording wants: dynamo would otherwise trace them into the graph.
            self._handles = [
                module.register_forward_hook(eager(hook), with_kwargs=True)
                for module, hook in self._hooks
            ]
            self._handles.append(
                self.model.register_forward_hook(eager(self._on_output))
            )
            self._handles.append(
                self.model.register_forward_pre_hook(
                    eager(self._on_input), with_kwargs=True
                )
            )

    def disarm(self) -> None:
        """Stop recording, drop everything recorded and detach the hooks."""
        self.recording = False
        self.clear()
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def clear(self) -> None:
        """Drop recorded inputs, outputs and gradients."""
        for layer in self.layers:
            for call in layer.calls:
                # The output's gradient hook holds the call, and the call the
                # output: the garbage collector cannot see a hook held by a
                # tensor, so without this every tracked step's inputs,
                # outputs and output gradients would stay alive for good.
                call.out = None
            layer.calls.clear()
        self.output = None
        self.outputs = []
        self.earlier_outputs = []
        self.forwards = 0

    def clear_grads(self) -> None:
        """Forget output gradients but keep inputs, before another backward pass."""
        for layer in self.layers:
            for call in layer.calls:
                call.b = None
                call.cache.pop("state_grads", None)  # RNN rule: h_n, c_n

    def remove(self) -> None:
        """Remove every hook from the model, for good."""
        self._removed = True
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
        self,
        layer: Layer,
        module: nn.Module,
        inputs: tuple[Any, ...],
        kwargs: dict[str, Any],
        output: Any,
    ) -> Any:
        if not self.recording or REENTRY.active or not torch.is_grad_enabled():
            return None
        x, out = self._recorded(layer, module, inputs, kwargs, output)
        if x is None or out is None or not out.requires_grad:
            return None
        n = self._batch
        broadcast = (
            isinstance(layer.rule, EmbeddingRule)
            and n > 1
            and x.dim() > 0
            and x.shape[0] == 1
            and out is output
            and out.shape[0] == 1
        )
        if broadcast:
            # One row of ids for a batch of n samples (positions broadcast
            # over the batch, Hugging Face's ``position_ids`` [1, T]): the
            # output, expanded to the batch (equal values, and ``.grad`` sums
            # the rows as the broadcast did), receives each sample's gradient.
            out = output = out.expand(n, *out.shape[1:]).contiguous()
            x = x.expand(n, *x.shape[1:])
        call = Call(x.detach(), forward=self.forwards)
        if broadcast:
            call.cache["broadcast"] = True
        if layer.rule.needs_args:
            # One detached tensor per input tensor: identity is meaningful
            # (attention's self-attention path checks ``query is key``).
            seen: dict[int, Tensor] = {}
            call.args = tuple(_detach(a, seen) for a in inputs)
            call.kwargs = {k: _detach(v, seen) for k, v in kwargs.items()}
        call.out, call.version = out, out._version
        out.register_hook(partial(_store_grad, call, layer.rule))  # type: ignore[no-untyped-call]
        layer.rule.on_forward(call, module, inputs, out)
        layer.rule.on_outputs(call, output)
        layer.calls.append(call)
        return output if broadcast else None

    def _on_input(
        self, module: nn.Module, inputs: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Note the batch size of the model's input (axis 0 of its first tensor)."""
        del module
        if self.recording and not REENTRY.active and torch.is_grad_enabled():
            x = _first_input(inputs, kwargs)
            self._batch = x.shape[0] if x is not None and x.dim() else 0

    @staticmethod
    def _recorded(
        layer: Layer,
        module: nn.Module,
        inputs: tuple[Any, ...],
        kwargs: dict[str, Any],
        output: Any,
    ) -> tuple[Tensor | None, Tensor | None]:
        """The input and output tensors a call of ``layer`` records."""
        own = layer.rule.recorded(module, inputs, output)
        if own is not None:
            return own
        x = _first_input(inputs, kwargs)
        out = output if isinstance(output, Tensor) else _first_tensor(output)
        return x, out

    def recorded_input(
        self,
        layer: Layer,
        module: nn.Module,
        inputs: tuple[Any, ...],
        kwargs: dict[str, Any],
        output: Any,
    ) -> Tensor | None:
        """The input tensor a call of ``layer`` records (for ``batch_axes``)."""
        return self._recorded(layer, module, inputs, kwargs, output)[0]

    def _on_output(
        self, module: nn.Module, inputs: tuple[Any, ...], output: Any
    ) -> None:
        del module, inputs
        out = _first_tensor(output)  # logits of dict/tuple outputs too
        if (
            self.recording
            and not REENTRY.active  # our own re-run of the whole model
            and torch.is_grad_enabled()
            and out is not None
        ):
            if self.output is not None and self.output.grad_fn is not None:
                self.earlier_outputs.append(self.output.grad_fn)
            self.output = out
            self.outputs = [out, *(t for t in _batch_tensors(output) if t is not out)]
            self.forwards += 1

    # -- checks --------------------------------------------------------------------
    def check_model(self) -> None:
        """Raise ``EngineError`` if per-sample gradients are undefined or uncovered.

        Some parameters without coverage are not an error (the statistics cover
        the others, see ``coverage``); no covered parameter at all is.
        """
        if len(self.uncovered) == len(self.params):
            raise EngineError(
                "No per-sample engine covers any parameter: "
                + "; ".join(sorted(set(self.coverage.values())))[:1000]
            )
        mixing = mixes_samples(self.model)
        if mixing is not None:
            raise EngineError(mixing)
        if not self.recorded:
            raise EngineError(
                "The forward pass of this step was not recorded: use consecutive "
                "step numbers, or open `cockpit.step(...)` before the forward pass"
            )


def mixes_samples(model: nn.Module) -> str | None:
    """Why per-sample gradients of ``model`` are undefined now, or None.

    A BatchNorm in train mode normalises with the batch's statistics, so every
    sample's output depends on every other sample (docs/any-model.md).
    """
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training
    ]
    if not names:
        return None
    which = ", ".join(repr(n) for n in names)
    one = len(names) == 1
    return (
        f"BatchNorm {which} {'is' if one else 'are'} in train mode: "
        f"{'it mixes' if one else 'they mix'} samples, so per-sample "
        "gradients are undefined (use eval mode or GroupNorm)"
    )


def eager(fn: Any) -> Any:
    """``fn`` left out of ``torch.compile``'s graphs (run as plain Python)."""
    return torch.compiler.disable(fn, recursive=True)  # type: ignore[no-untyped-call]


def _store_grad(call: Call, rule: LayerRule, grad: Tensor | None) -> None:
    if grad is None and call.b is not None:
        # An output without a gradient (an RNN's sequence when only h_n is
        # read): keep the b the rule set from its other outputs.
        return
    call.set_b(rule.output_grad(call, grad))


def _label(rule: LayerRule) -> str:
    return rule.label_text if isinstance(rule, FuncRule) else rule.label


def _detach(value: Any, seen: dict[int, Tensor]) -> Any:
    if not isinstance(value, Tensor):
        return value
    if id(value) not in seen:
        seen[id(value)] = value.detach()
    return seen[id(value)]


#: Keywords that carry a model's samples (Hugging Face's names), looked for
#: before the others in a call without positional tensors: ``position_ids``
#: ``[1, T]`` or a shared mask may come first.
INPUT_KEYWORDS = (
    "input_ids",
    "inputs_embeds",
    "pixel_values",
    "input_values",
    "input_features",
)


def _first_input(inputs: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor | None:
    """The tensor whose leading axis is the batch: first positional, else keyword."""
    for v in inputs:
        if isinstance(v, Tensor):
            return v
    for k in INPUT_KEYWORDS:
        if isinstance(kwargs.get(k), Tensor):
            return kwargs[k]  # type: ignore[no-any-return]
    for v in kwargs.values():
        if isinstance(v, Tensor):
            return v
    return None


def _batch_tensors(value: Any) -> list[Tensor]:
    """The tensors with a batch axis of a model output (one level of nesting)."""
    if isinstance(value, Tensor):
        return [value] if value.dim() > 0 else []
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, tuple | list):
        return [v for v in value if isinstance(v, Tensor) and v.dim() > 0]
    return []
