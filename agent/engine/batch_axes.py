"""Which axis of each recorded module input holds the samples: known, not guessed.

Shapes alone cannot tell: in PyTorch's default sequence-first layout
(``nn.TransformerEncoder``, ``nn.MultiheadAttention``, ``nn.LSTM`` with
``batch_first=False``) a Linear layer sees ``[T, B, d]``, and when ``T == B`` its
leading axis looks like the batch; ``pos(torch.arange(T))`` looks batched when
``T == B``. So the engine follows the samples: it re-runs the model on two small
slices of the recorded batch (``m₁ < m₂`` samples, cut along the model input's
batch axis, no gradients kept, random state and buffers restored) and records
what each covered module receives. The axis whose size follows the number of
samples is that module's batch axis; an input that does not change is the same
for every sample (broadcast over the batch). Modules that declare their layout
(``batch_first``) are checked against it: a model whose input's leading axis is
not the batch (a sequence-first model input) is refused with the reason.

Per module: batch axis 0 is served as recorded; another axis, by rules whose
statistics do not depend on the order of the other axes (``MOVABLE``:
Linear, LayerNorm, Embedding), with the axis moved first; anything else (no
batch axis, several, batch merged with another axis, calls that differ between
the slices) by the whole-model re-run, or not at all, with the reason.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from glasscockpit.agent.engine.errors import EngineError
from glasscockpit.agent.engine.func_rule import (
    REENTRY,
    ModelRule,
    _first_tensor,
    backpack_io_kept,
)
from glasscockpit.agent.engine.norm_rules import EmbeddingRule, LayerNormRule
from glasscockpit.agent.engine.rules import LinearRule

if TYPE_CHECKING:
    from glasscockpit.agent.engine.hooks import Call, HookEngine, Layer


def mixes_samples(model: nn.Module) -> str | None:
    """``hooks.mixes_samples`` (imported late: hooks imports this module)."""
    from glasscockpit.agent.engine.hooks import mixes_samples as mixes

    return mixes(model)


#: Rules whose statistics do not depend on the order of the input's other axes
#: (position-wise maps): a call with its samples on another axis (sequence-
#: first) is served with that axis moved to the front.
MOVABLE = (LinearRule, LayerNormRule, EmbeddingRule)

#: Layout signatures whose decisions are kept (``_signature``).
MAX_SIGNATURES = 64


@dataclass
class Decision:
    """What the probe found for one shape signature of the model's input."""

    #: Why no per-sample reading is possible at all, or None.
    error: str | None = None
    #: Per layer (by index in ``engine.layers``): its batch axis, or why none.
    axes: dict[int, int | str] = field(default_factory=dict)
    #: The slices did not change the model's output rows: no decision.
    inconclusive: bool = False


#: What one slice showed: layer input shapes, declared modules' first input
#: shapes, and the model output's rows.
Seen = tuple[dict[int, list[tuple[int, ...]]], dict[str, tuple[int, ...]], int | None]


def declared_axis(module: nn.Module) -> int | None:
    """The batch axis a module's first input has by its own configuration."""
    if isinstance(module, nn.MultiheadAttention | nn.RNNBase | nn.Transformer):
        return 0 if module.batch_first else 1
    if isinstance(module, nn.TransformerEncoderLayer | nn.TransformerDecoderLayer):
        return 0 if module.self_attn.batch_first else 1
    if isinstance(module, nn.TransformerEncoder | nn.TransformerDecoder):
        first = module.layers[0] if len(module.layers) else None
        return None if first is None else declared_axis(first)
    return None


def resolve(engine: HookEngine) -> None:
    """Decide each layer's batch axis for the recorded step and apply it.

    Raises:
        EngineError: when the samples' axis cannot be known for the model.
    """
    root = engine.root
    if not root.calls:
        return
    call = root.calls[0]
    n = call.x.shape[0] if call.x.dim() else 0
    if n < 2 or mixes_samples(engine.model) is not None:
        return  # one sample, or samples mixed (train-mode BatchNorm): no split
    key = _signature(call)
    decision = engine.batch_decisions.get(key)
    if decision is None:
        decision = _probe(engine, call, n)
        if len(engine.batch_decisions) >= MAX_SIGNATURES:
            engine.batch_decisions.pop(next(iter(engine.batch_decisions)))
        engine.batch_decisions[key] = decision
    if decision.error is not None:
        raise EngineError(decision.error)
    if decision.inconclusive:
        return
    moved: dict[str, list[str]] = {}
    for index, axis in decision.axes.items():
        layer = engine.layers[index]
        tied = _tied(engine, layer)
        if not layer.names and not tied:
            continue
        if isinstance(axis, str):
            moved.setdefault(axis, []).extend([*layer.names.values(), *tied])
            continue
        for c in layer.calls:
            c.move_batch_axis(axis)
    for why, names in moved.items():
        engine.reassign(names, why)


def _tied(engine: HookEngine, layer: Layer) -> list[str]:
    """Tracked names of the ties ``layer`` takes part in."""
    return [
        name
        for name, uses in engine.ties.items()
        if any(used is layer for used, _ in uses)
    ]


def _signature(call: Call) -> tuple[Any, ...]:
    """The layout of the model call's tensors: ranks, and which axes have ``B``.

    Not the sizes themselves: a new sequence length (dynamic padding) changes
    no decision unless it makes an axis as long as the batch (``T = B``), the
    case shapes cannot tell apart; that is a new signature, probed again.
    """
    n = call.x.shape[0]

    def layout(v: Any) -> Any:
        if not isinstance(v, Tensor):
            return type(v).__name__
        return (v.dim(), tuple(i for i, s in enumerate(v.shape) if s in (1, n)))

    return (
        tuple(layout(a) for a in call.args),
        tuple((k, layout(v)) for k, v in call.kwargs.items()),
    )


def _probe(engine: HookEngine, call: Call, n: int) -> Decision:
    """Run the model on two small slices of the batch; compare what layers get."""
    sizes = (1, 2) if n < 4 else (2, 3)
    layers = [
        (i, layer)
        for i, layer in enumerate(engine.layers)
        if layer is not engine.root and (layer.names or _tied(engine, layer))
    ]
    declared = [
        (name, m, axis)
        for name, m in engine.model.named_modules()
        if (axis := declared_axis(m)) is not None
    ]
    seen: list[Seen] = []
    try:
        for m in sizes:
            seen.append(_run(engine, call, n, m, layers, declared))
    except Exception as exc:  # noqa: BLE001 - reported as the reason
        return Decision(
            error="cannot tell which axis of each layer's input holds the samples: "
            f"the model failed on {sizes[0]} of the batch's samples "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        )
    (small, small_decl, small_rows), (large, large_decl, large_rows) = seen
    if small == large and small_decl == large_decl and small_rows == large_rows:
        # The cut did not reach the samples (they came in a structure the
        # cut does not know): nothing learnt, the recorded shapes decide.
        return Decision(inconclusive=True)
    for name, module, axis in declared:
        if name not in small_decl or name not in large_decl:
            continue
        changed = _changed(small_decl[name], large_decl[name])
        if changed is not None and changed and changed != [axis]:
            return Decision(
                error="the model's input has its samples on another axis than 0: "
                f"{name or 'the model'!r} ({type(module).__name__}, samples on "
                f"axis {axis} by its batch_first) receives them on axis "
                f"{changed[0]}; pass batch-first inputs to the model"
            )
    decision = Decision()
    for index, layer in layers:
        full = [c for c in layer.calls if c.forward == call.forward]
        if not full and index not in small and index not in large:
            continue  # not called by this forward pass: nothing to decide
        decision.axes[index] = _layer_axis(
            layer, small.get(index, []), large.get(index, []), full, n, sizes[1]
        )
    return decision


def _changed(a: tuple[int, ...], b: tuple[int, ...]) -> list[int] | None:
    """Axes whose size differs between two shapes; None if the ranks differ."""
    if len(a) != len(b):
        return None
    return [i for i, (p, q) in enumerate(zip(a, b, strict=True)) if p != q]


def _layer_axis(
    layer: Layer,
    small: list[tuple[int, ...]],
    large: list[tuple[int, ...]],
    full: list[Call],
    n: int,
    m: int,
) -> int | str:
    """The batch axis of every call of ``layer``, or why it has none we can use."""
    kind = type(layer.module).__name__
    if full and all(c.cache.get("broadcast") for c in full):
        return 0  # expanded to the batch when recorded (``HookEngine``)
    if not (len(small) == len(large) == len(full)):
        return (
            f"its module ({kind}) was called {len(full)} times on the batch and "
            f"{len(small)}/{len(large)} times on a few of its samples: cannot tell "
            "which axis holds the samples"
        )
    axes = set()
    for s, g, c in zip(small, large, full, strict=True):
        changed = _changed(s, g)
        full_shape = tuple(c.x.shape)
        if changed == []:
            return (
                f"its module ({kind}) gets the same input for every sample (e.g. "
                "positions broadcast over the batch): its gradient is summed over "
                "samples"
            )
        if (
            changed is None
            or len(changed) != 1
            or len(full_shape) != len(g)
            or g[changed[0]] != m
            or full_shape[changed[0]] != n
        ):
            return (
                f"its module ({kind}) gets inputs of shape {list(full_shape)} whose "
                "samples are merged with another axis (e.g. tokens flattened into "
                "rows) or spread over several"
            )
        axes.add(changed[0])
    if len(axes) != 1:
        return f"its module ({kind}) gets the samples on different axes per call"
    axis = axes.pop()
    if axis != 0 and not isinstance(layer.rule, MOVABLE):
        return (
            f"its module ({kind}) gets the samples on axis {axis} (sequence-first), "
            "which its rule does not serve"
        )
    return axis


def _cut(value: Any, n: int, m: int) -> Any:
    """``value`` with every tensor of leading size ``n`` cut to ``m`` rows.

    Into dicts, lists and tuples too (a batch passed as a dict).
    """
    if isinstance(value, Tensor):
        return value[:m] if value.dim() and value.shape[0] == n else value
    if isinstance(value, dict):
        return {k: _cut(v, n, m) for k, v in value.items()}
    if isinstance(value, list | tuple) and type(value) in (list, tuple):
        return type(value)(_cut(v, n, m) for v in value)
    return value


def _run(
    engine: HookEngine,
    call: Call,
    n: int,
    m: int,
    layers: list[tuple[int, Layer]],
    declared: list[tuple[str, nn.Module, int]],
) -> Seen:
    """What layers record and declared modules get on ``m`` samples."""
    rule = engine.root.rule
    split = rule.batched(call) if isinstance(rule, ModelRule) else frozenset()
    args = tuple(_cut(a, n, m) for a in call.args)
    kwargs = {
        k: _cut(v, n, m) if k in split or not isinstance(v, Tensor) else v
        for k, v in call.kwargs.items()
    }
    shapes: dict[int, list[tuple[int, ...]]] = {}
    firsts: dict[str, tuple[int, ...]] = {}
    handles = []

    def record_layer(index: int, layer: Layer) -> Any:
        def hook(
            module: nn.Module, inputs: tuple[Any, ...], kwargs: Any, output: Any
        ) -> None:
            x = engine.recorded_input(layer, module, inputs, kwargs, output)
            if x is not None:
                shapes.setdefault(index, []).append(tuple(x.shape))

        return hook

    def record_declared(name: str) -> Any:
        def hook(module: nn.Module, inputs: tuple[Any, ...]) -> None:
            del module
            if name not in firsts and inputs and isinstance(inputs[0], Tensor):
                firsts[name] = tuple(inputs[0].shape)

        return hook

    try:
        for index, layer in layers:
            handles.append(
                layer.module.register_forward_hook(
                    record_layer(index, layer), with_kwargs=True
                )
            )
        for name, module, _ in declared:
            handles.append(module.register_forward_pre_hook(record_declared(name)))
        with _quiet(engine.model):
            # ``forward``, not ``__call__``: the model's own hooks (the engine's,
            # a Trainer integration's) must not see this pass.
            raw = engine.model.forward(*args, **kwargs)
        for index, layer in layers:
            if layer.module is engine.model:  # a model that is one layer: no hook ran
                x = engine.recorded_input(layer, layer.module, args, kwargs, raw)
                if x is not None:
                    shapes.setdefault(index, []).append(tuple(x.shape))
        out = _first_tensor(raw)
    finally:
        for h in handles:
            h.remove()
    return shapes, firsts, out.shape[0] if out is not None and out.dim() else None


@contextlib.contextmanager
def _quiet(model: nn.Module) -> Iterator[None]:
    """A forward pass that leaves no trace: RNG, buffers and the engine's hooks.

    Gradients stay enabled (as in the recorded pass: PyTorch's fused
    transformer path, taken without them, skips the submodules).
    """
    devices = sorted(
        {p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"}
    )
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    REENTRY.active = True
    try:
        with (
            torch.random.fork_rng(devices=devices),
            torch.enable_grad(),
            backpack_io_kept(),
        ):
            yield
    finally:
        REENTRY.active = False
        with torch.no_grad():
            for b, saved in buffers:
                # Only what the pass changed, through ``.data``: the values
                # the recorded graph saved come back without a version bump
                # (backward checks the versions of saved buffers).
                if not torch.equal(b, saved):
                    b.data.copy_(saved)
