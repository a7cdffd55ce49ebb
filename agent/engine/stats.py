"""Per-sample statistics of one tracked step, reduced layer by layer and cached.

Scale convention (Cockpit's): ``g_n = B · ĝ_n`` is the gradient of sample ``n``'s
loss when the loss is the mean over ``B`` samples, and ``g = p.grad`` is their mean.
Every accessor returns unscaled ``g_n`` statistics.

Gradient accumulation: a step whose backward passes went through ``F`` forward
passes of the model (micro-batches of ``B`` samples each, the loss their mean)
has ``F·B`` samples, in the order of the forward passes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from glasscockpit.agent.engine.errors import dense_grad
from glasscockpit.agent.engine.func_rule import FuncRule
from glasscockpit.agent.engine.hooks import Call, EngineError, HookEngine, Layer
from glasscockpit.agent.engine.norm_rules import EmbeddingRule
from glasscockpit.agent.engine.rules import LayerRule, LinearRule
from glasscockpit.agent.engine.scratch import SCRATCH
from glasscockpit.agent.engine.tie_rule import tied_layers
from glasscockpit.agent.environment.grad_scale import GradScale, divide
from glasscockpit.agent.environment.local_grads import LocalGrads, world_size

_HALF = (torch.float16, torch.bfloat16)
#: Per-sample gradient values ``StepStats`` may keep for one step (64 MiB float32).
CACHE_ELEMENTS = 1 << 24
#: Per-sample gradient values a statistic builds at a time for a layer it does
#: not keep (16 MiB float32): a wide convolution at a large batch would
#: otherwise build B·D values, and a squared copy, at once (GiBs).
CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class Outer:
    """Per-sample gradients ``g_n = u_n v_nᵀ`` of a weight, not built.

    ``u_n v_nᵀ`` built as ``u[:, :, None] * v[:, None, :]`` gives exactly the
    float32 values ``batch_grads`` yields (one rounded product per entry), so
    consumers may use the factors in place of those values.

    Attributes:
        u: ``[B, out]``, the output gradients scaled to ``g_n``.
        v: ``[B, in]``, the layer inputs.
    """

    u: Tensor
    v: Tensor

    def chunks(self, max_elements: int | None = None) -> Iterator[Tensor]:
        """The per-sample gradients ``[b, out, in]``, ``b`` samples at a time."""
        n, per_sample = self.u.shape[0], self.u.shape[1] * self.v.shape[1]
        step = n if max_elements is None else max(1, max_elements // per_sample)
        for s in range(0, n, step):
            yield self.u[s : s + step, :, None] * self.v[s : s + step, None, :]


@dataclass(frozen=True)
class Sparse:
    """Per-sample gradients that are exactly ``+0.0`` except for ``values``.

    An embedding's per-sample gradient ``[B, V, E]`` has one nonzero row per
    distinct (sample, token) pair; ``values`` are those rows, summed and scaled
    exactly as the built tensor's (same additions in the same order).

    Attributes:
        values: ``[R, E]`` the rows that may be nonzero, fresh (modifiable).
        zeros: how many of the built tensor's entries are not in ``values``.
    """

    values: Tensor
    zeros: int


@dataclass(frozen=True)
class Scaled:
    """Per-sample gradients ``values · scale`` (one rounded product each), not built.

    Kept per-sample gradients come this way from ``batch_grads_factored`` with
    ``views``: a consumer that only reads them (a histogram comparing them with
    thresholds) saves a pass writing B·D values.

    Attributes:
        values: ``[b, *shape]``, a view of the kept values: never modify it.
        scale: the factor, > 0.
    """

    values: Tensor
    scale: float

    def built(self) -> Tensor:
        """The values ``batch_grads`` yields, bit for bit (fresh)."""
        return self.values * self.scale


@dataclass(frozen=True)
class Sampled:
    """Per-sample gradients of some of the batch's samples, each standing for more.

    ``batch_grads_factored(sample=...)`` yields these for layers whose B·D
    values exceed its limit: ``m`` consecutive samples from a uniformly random
    start, wrapping around, so every sample is in with probability ``m / B``
    and counts weighted by ``weight = B / m`` are unbiased.

    Attributes:
        values: the per-sample gradients of the chosen samples (or a chunk).
        weight: ``B / m``.
    """

    values: Tensor | Scaled
    weight: float


class StepStats:
    """Lazily computed, shared by every instrument of one step.

    Args:
        engine: the armed engine after the step's backward pass.
        check: verify once that ``Σ_n ĝ_n`` equals ``p.grad`` (catches parameters
            also used outside their module, e.g. tied weights).
        grad_scale: the loss scale (``GradScaler``) in the recorded output
            gradients and in ``.grad``, taken off both.
        local: this process's gradients when ``.grad`` is all-reduced (DDP).
        global_grad: ``batch_dot`` against the all-reduced ``.grad``.
    """

    def __init__(
        self,
        engine: HookEngine,
        *,
        check: bool = False,
        grad_scale: GradScale | None = None,
        local: LocalGrads | None = None,
        global_grad: bool = False,
    ) -> None:
        engine.check_model()
        self.engine = engine
        #: This process's gradients when ``.grad`` is all-reduced (DDP).
        self._local = local
        #: ``batch_dot``'s ``g`` is the all-reduced ``.grad`` (global readings
        #: under data parallelism); the sum check still uses ``local``.
        self._global_grad = global_grad
        self._local_factor = 1.0 if grad_scale is None else grad_scale.outputs
        self._grad_factor: Tensor | float = 1.0
        #: Gradient norms at or below this are zero in ``_check_sums``.
        self._floor = 0.0
        if grad_scale is not None:
            self._grad_factor = grad_scale.grads
            for layer in engine.layers:
                for c in layer.calls:
                    if c.b is None:
                        continue
                    if c.b.dtype in _HALF and not layer.rule.needs_args:
                        # b / s underflows in fp16 (why the loss was scaled).
                        c.b = c.b.float()
                        if c.x.dtype in _HALF:
                            c.x = c.x.float()
                    old, c.b = c.b, divide(c.b, grad_scale.outputs)
                    # What the rule captured with ``b`` carries the scale too.
                    layer.rule.unscale(c, old, grad_scale.outputs)
        self._collect()
        sizes = {c.x.shape[0] for _, calls in self.layers for c in calls}
        if len(sizes) != 1:
            raise EngineError(
                f"Recorded calls disagree on the batch size ({sorted(sizes)}); "
                "micro-batches of gradient accumulation need equal sizes (and a "
                "forward pass in grad mode needs a backward pass)"
            )
        #: Samples per forward pass of the model.
        self.group_size: int = sizes.pop()
        forwards = sorted({c.forward for _, calls in self.layers for c in calls})
        #: Where each forward pass's samples start among the step's samples.
        self._offset = {f: i * self.group_size for i, f in enumerate(forwards)}
        #: Samples of the step: all forward passes' (the loss is their mean).
        self.batch_size: int = self.group_size * len(forwards)
        self._cache: dict[str, dict[str, Tensor]] = {}
        #: Per-sample gradients of layers whose rule builds them anyway, kept for
        #: the step so that every statistic and histogram reuses one build.
        self._grads: dict[tuple[int, int], dict[str, Tensor]] = {}
        self._held = 0
        #: Parameters the first-step check moved to another engine: statistics
        #: computed before it (the GGN diagonal) used the wrong rule for them.
        self.moved: list[str] = []
        if check:
            self._check_sums()

    def _collect(self) -> None:
        """Layers serving some parameter whose calls were backpropagated through."""
        self.engine.reassign_unbatched()
        for layer in self.engine.layers:
            if layer.names and layer.rule.needs_args:
                rows = {
                    (c.x.shape[0], c.b.shape[0] if c.b.dim() else 0)
                    for c in layer.calls
                    if c.b is not None
                }
                if any(n != m for n, m in rows):
                    # A re-run per sample needs one output row per sample.
                    self.engine.drop(
                        layer,
                        f"{type(layer.module).__name__} returns {sorted(rows)[0][1]} "
                        f"rows for {sorted(rows)[0][0]} samples (e.g. tokens "
                        "flattened into rows): no per-sample re-run",
                    )
        #: (layer, its calls of one forward pass), per forward pass of the model.
        self.layers: list[tuple[Layer, list[Call]]] = []
        for layer in self.engine.layers:
            if not layer.names:
                continue
            by_forward: dict[int, list[Call]] = {}
            for c in layer.calls:
                if c.b is not None:
                    by_forward.setdefault(c.forward, []).append(c)
            self.layers.extend((layer, by_forward[f]) for f in sorted(by_forward))
        self.layers.extend(tied_layers(self.engine.ties, set(self.engine.uncovered)))
        if not self.layers:
            raise EngineError(
                "No covered module was called in a backward pass of this step"
            )

    def grad(self, p: Tensor) -> Tensor | None:
        """``p``'s gradient of the recorded samples, without the loss scale.

        ``.grad``, or under multi-process DDP this process's own (``local``).
        """
        if self._local is not None:
            g = self._local.get(p)
            return None if g is None else divide(g, self._local_factor)
        g = dense_grad(p)
        return None if g is None else divide(g.detach(), self._grad_factor)

    # -- per layer -------------------------------------------------------------------
    @staticmethod
    def layer_grads(
        layer: Layer, calls: list[Call], scale: float = 1.0
    ) -> dict[str, Tensor]:
        """``scale · ĝ_n`` per local parameter name, summed over the module's calls."""
        total: dict[str, Tensor] = {}
        # Scaling the (small) output gradient saves a pass over B·D values;
        # rules reading captures of their call's own ``b`` scale their result.
        late = scale != 1.0 and layer.rule.needs_args
        for c in calls:
            assert c.b is not None
            b = c.b if scale == 1.0 or late else c.b * scale
            rule = layer.rule.bind(c)
            for k, g in rule.batch_grads(layer.module, c.x, b).items():
                if k not in layer.names:  # served elsewhere (``reassign``)
                    continue
                if late:
                    g = g * scale
                total[k] = total[k] + g if k in total else g
        return total

    def _materialised(
        self, layer: Layer, calls: list[Call]
    ) -> dict[str, Tensor] | None:
        """``ĝ_n`` of a layer whose rule builds them for any statistic, kept once.

        None when the rule has cheaper closed forms (2-D Linear, Embedding) or
        keeping them would exceed ``CACHE_ELEMENTS`` for this step.
        """
        key = (id(layer), calls[0].forward)
        if key in self._grads:
            return self._grads[key]
        if not layer.rule.materialises(calls[0].x):
            return None
        size = self.group_size * sum(
            layer.module.get_parameter(k).numel() for k in layer.names
        )
        if self._held + size > CACHE_ELEMENTS:
            return None
        self._held += size
        with SCRATCH.lending(self):  # kept until this StepStats is collected
            self._grads[key] = self.layer_grads(layer, calls)
        return self._grads[key]

    def _by_samples(
        self,
        layer: Layer,
        call: Call,
        fn: Callable[[LayerRule, nn.Module, Call], dict[str, Tensor]],
        over_samples: bool,
    ) -> dict[str, Tensor]:
        """``fn(bound rule, module, call)``, ``CHUNK_ELEMENTS`` values at a time.

        Rules that build per-sample gradients (``materialises``) get the call
        cut into sample ranges; the pieces' results are concatenated, or summed
        when ``over_samples`` (a sum over samples). Rules re-running recorded
        arguments (``needs_args``) keep their call whole: their captures belong
        to it.
        """
        rule = layer.rule
        per_sample = sum(p.numel() for p in self._params(layer).values())
        step = max(1, CHUNK_ELEMENTS // max(per_sample, 1))
        if rule.needs_args or step >= self.group_size or not rule.materialises(call.x):
            return fn(rule.bind(call), layer.module, call)
        outs = []
        for s in range(0, self.group_size, step):
            part = call.part(slice(s, s + step))
            outs.append(fn(rule.bind(part), layer.module, part))
        if over_samples:
            return {
                k: functools.reduce(torch.add, (o[k] for o in outs)) for k in outs[0]
            }
        return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}

    def _params(self, layer: Layer) -> dict[str, nn.Parameter]:
        return {k: layer.module.get_parameter(k) for k in layer.names}

    def _place(
        self, out: dict[str, Tensor], name: str, calls: list[Call], v: Tensor
    ) -> None:
        """Store per-sample values ``v`` [group] of one forward pass in ``out[name]``.

        One forward pass: ``v`` itself. Several: a ``[B]`` vector, zero for the
        samples of forward passes that did not call the module.
        """
        if self.batch_size == self.group_size:
            out[name] = v
            return
        if name not in out:
            out[name] = v.new_zeros(self.batch_size, *v.shape[1:])
        start = self._offset[calls[0].forward]
        out[name][start : start + self.group_size] = v

    @staticmethod
    def _add(out: dict[str, Tensor], name: str, v: Tensor) -> None:
        out[name] = out[name] + v if name in out else v

    # -- accessors -----------------------------------------------------------------
    def batch_l2(self) -> dict[str, Tensor]:
        """``‖g_n‖²`` per tracked parameter name, each ``[B]``."""
        if "l2" not in self._cache:
            out: dict[str, Tensor] = {}
            b2 = float(self.batch_size) ** 2
            for layer, calls in self.layers:
                kept = self._materialised(layer, calls)
                if kept is not None:
                    # vector_norm reduces without a B·D temporary.
                    vals = {
                        k: torch.linalg.vector_norm(g.flatten(1), dim=1).square()
                        for k, g in kept.items()
                    }
                elif len(calls) == 1:
                    vals = self._by_samples(
                        layer,
                        calls[0],
                        _l2,
                        over_samples=False,
                    )
                else:
                    vals = {
                        k: g.flatten(1).square().sum(1)
                        for k, g in self.layer_grads(layer, calls).items()
                    }
                for k, v in vals.items():
                    if k in layer.names:
                        self._place(out, layer.names[k], calls, v * b2)
            self._cache["l2"] = out
        return self._cache["l2"]

    def batch_dot(self) -> dict[str, Tensor]:
        """``g_n · g`` per tracked parameter name with ``g = p.grad``, each ``[B]``."""
        if "dot" not in self._cache:
            self._cache["dot"] = self.dot_with(self._grads_unscaled())
        return self._cache["dot"]

    def _grads_unscaled(self) -> dict[str, Tensor]:
        """``g`` (``grad``: ``.grad`` or this process's) by tracked name, if any."""
        if self._global_grad:
            grads = {n: dense_grad(p) for n, p in self.engine.params}
            unscaled = {
                n: None if g is None else divide(g.detach(), self._grad_factor)
                for n, g in grads.items()
            }
        else:
            unscaled = {n: self.grad(p) for n, p in self.engine.params}
        return {n: g for n, g in unscaled.items() if g is not None}

    def dot_with(self, direction: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``g_n · d`` per tracked parameter name in ``direction``, each ``[B]``.

        Args:
            direction: ``d`` by tracked parameter name, each of its shape.
        """
        return self.dots_with([direction])[0]

    def dots_with(
        self, directions: Sequence[Mapping[str, Tensor]], grad: bool = False
    ) -> list[dict[str, Tensor]]:
        """``dot_with`` for several directions, one pass over each layer.

        Kept per-sample gradients are read once for all directions (one matrix
        product with the stacked directions instead of one pass per direction).
        With ``grad``, ``batch_dot`` joins the pass unless it is cached already.
        """
        if grad and "dot" not in self._cache:
            *outs, self._cache["dot"] = self._dots(
                [
                    *directions,
                    self._grads_unscaled(),
                ]
            )
            return outs
        return self._dots(directions)

    def _dots(
        self, directions: Sequence[Mapping[str, Tensor]]
    ) -> list[dict[str, Tensor]]:
        outs: list[dict[str, Tensor]] = [{} for _ in directions]
        for layer, calls in self.layers:
            locals_ = [
                {k: d[n] for k, n in layer.names.items() if n in d} for d in directions
            ]
            if not any(locals_):
                continue
            kept = self._materialised(layer, calls)
            if kept is None and len(calls) != 1:
                kept = self.layer_grads(layer, calls)
            if kept is not None:
                for k, g in kept.items():
                    if k not in layer.names:
                        continue
                    which = [i for i, loc in enumerate(locals_) if k in loc]
                    if not which:
                        continue
                    rows = [locals_[i][k].reshape(-1).to(g.dtype) for i in which]
                    # [K, P] @ [P, B]: on CPU 2-4x faster than [B, P] @ [P, K]
                    # after an interleaving stack into [P, K], for small K.
                    dots = (
                        (g.flatten(1) @ rows[0])[None]
                        if len(rows) == 1
                        else torch.stack(rows) @ g.flatten(1).T
                    )  # [K, B]
                    scaled = (dots * self.batch_size).unbind(0)  # one op each
                    for i, v in zip(which, scaled, strict=True):
                        self._place(outs[i], layer.names[k], calls, v)
                continue
            if (
                not layer.rule.needs_args  # re-runs and ties chunk on their own
                and layer.rule.materialises(calls[0].x)
                and sum(map(bool, locals_)) > 1
            ):
                # The rule would build the per-sample gradients once per direction:
                # build them once (a few samples at a time) for all directions.
                vals = self._by_samples(
                    layer,
                    calls[0],
                    functools.partial(_dots_of, locals_),
                    over_samples=False,
                )
                for key, v in vals.items():
                    index, k = key.split(":", 1)
                    if k in layer.names:
                        self._place(
                            outs[int(index)], layer.names[k], calls, v * self.batch_size
                        )
                continue
            for i, local in enumerate(locals_):
                if not local:
                    continue
                vals = self._by_samples(
                    layer,
                    calls[0],
                    functools.partial(_dot, local),
                    over_samples=False,
                )
                for k, v in vals.items():
                    if k in layer.names:
                        self._place(outs[i], layer.names[k], calls, v * self.batch_size)
        return outs

    def sum_grad_squared(self) -> dict[str, Tensor]:
        """``Σ_n g_n²`` per tracked parameter name, each of the parameter's shape."""
        if "sgs" not in self._cache:
            out: dict[str, Tensor] = {}
            b2 = float(self.batch_size) ** 2
            for layer, calls in self.layers:
                kept = self._materialised(layer, calls)
                if kept is not None:
                    vals = {k: g.square().sum(0) for k, g in kept.items()}
                elif len(calls) == 1:
                    vals = self._by_samples(
                        layer,
                        calls[0],
                        _sgs,
                        over_samples=True,
                    )
                else:
                    vals = {
                        k: g.square().sum(0)
                        for k, g in self.layer_grads(layer, calls).items()
                    }
                for k, v in vals.items():
                    if k in layer.names:  # a sum over samples: over forward passes
                        self._add(out, layer.names[k], v * b2)
            self._cache["sgs"] = out
        return self._cache["sgs"]

    def batch_grads(
        self, max_elements: int | None = None
    ) -> Iterator[tuple[str, Tensor, Tensor]]:
        """``(name, parameter, g_n [b, *shape])``, one layer at a time.

        With ``max_elements``, each layer comes in chunks of ``b ≤ B`` samples
        holding at most about that many per-sample values (at least one sample),
        so reductions over samples and entries (histograms) stay in cache. Each
        ``g_n`` tensor is fresh: consumers may modify it in place.
        """
        for layer, calls in self.layers:
            for name, theta, g in self._layer_batch_grads(layer, calls, max_elements):
                yield name, theta, g.built() if isinstance(g, Scaled) else g

    def _layer_batch_grads(
        self,
        layer: Layer,
        calls: list[Call],
        max_elements: int | None,
        spans: Sequence[tuple[int, int]] = (),
    ) -> Iterator[tuple[str, Tensor, Tensor | Scaled]]:
        """``batch_grads`` of one layer, kept values as ``Scaled`` views.

        ``spans``: sample ranges ``[start, end)`` to build (default: all).
        """
        scale = float(self.batch_size)
        params = self._params(layer)
        per_sample = sum(params[k].numel() for k in layer.names)
        chunk = self.group_size
        if max_elements is not None:
            chunk = max(1, min(self.group_size, max_elements // per_sample))
        kept = self._grads.get((id(layer), calls[0].forward))
        starts = [
            (s, min(s + chunk, end))
            for begin, end in (spans or [(0, self.group_size)])
            for s in range(begin, end, chunk)
        ]
        for s, e in starts:
            if kept is not None:
                for k, g in kept.items():
                    if k in layer.names:
                        yield (
                            layer.names[k],
                            params[k].detach(),
                            Scaled(g[s:e], scale),
                        )
                continue
            rule = layer.rule
            part = [
                c.part(
                    slice(s, e),
                    rule.batched(c) if isinstance(rule, FuncRule) else frozenset(),
                )
                for c in calls
            ]
            grads = self.layer_grads(layer, part, scale)
            for k in list(grads):
                yield layer.names[k], params[k].detach(), grads.pop(k)

    def batch_grads_factored(
        self,
        max_elements: int | None = None,
        sparse: bool = False,
        views: bool = False,
        sample: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Iterator[tuple[str, Tensor, Tensor | Outer | Sparse | Scaled | Sampled]]:
        """``batch_grads``, but rank-one weights come as ``Outer`` factors.

        The weight of an ``nn.Linear`` called once on a 2-D input has per-sample
        gradients ``B·b_n a_nᵀ``: B·out·in values from B·(out + in) numbers,
        which a consumer such as a histogram can often use without the product.
        With ``sparse``, an ``nn.Embedding`` called once comes as ``Sparse``
        rows: B·T·E values at most instead of B·V·E. With ``views``, per-sample
        gradients kept for other statistics come as ``Scaled`` (not copied).
        With ``sample``, a layer built from more than that many values (B·D,
        one forward pass) comes as ``Sampled`` gradients of ``m = sample // D``
        samples (at least one), drawn with ``generator``.
        """
        scale = float(self.batch_size)
        for layer, calls in self.layers:
            per_sample = sum(layer.module.get_parameter(k).numel() for k in layer.names)
            if (
                sample is not None
                and self.group_size == self.batch_size
                and self.group_size * per_sample > sample
                and not (type(layer.rule) is LinearRule and calls[0].x.dim() == 2)
                and not isinstance(layer.rule, EmbeddingRule)
            ):
                n = self.group_size
                m = max(1, min(n, sample // max(per_sample, 1)))
                start = int(torch.randint(n, (1,), generator=generator))
                spans = [(start, min(start + m, n))]
                if start + m > n:  # wrap around: every sample equally likely
                    spans.append((0, start + m - n))
                for name, theta, g in self._layer_batch_grads(
                    layer, calls, max_elements, spans
                ):
                    if isinstance(g, Scaled) and not views:
                        g = g.built()
                    yield name, theta, Sampled(g, n / m)
                continue
            c = calls[0]
            if (
                sparse
                and isinstance(layer.rule, EmbeddingRule)
                and len(calls) == 1
                and "weight" in layer.names
            ):
                assert c.b is not None
                weight = layer.module.get_parameter("weight")
                # Unbound: the scaled rows must not replace the cached segments.
                rows, _, _ = EmbeddingRule._segments(
                    layer.rule, layer.module, c.x, c.b * scale
                )
                built = self.group_size * weight.numel()
                rows_of = Sparse(rows, built - rows.numel())
                yield layer.names["weight"], weight.detach(), rows_of
                continue
            if not (
                type(layer.rule) is LinearRule and len(calls) == 1 and c.x.dim() == 2
            ):
                for name, theta, g in self._layer_batch_grads(
                    layer, calls, max_elements
                ):
                    if isinstance(g, Scaled) and not views:
                        g = g.built()
                    yield name, theta, g
                continue
            assert c.b is not None
            params = self._params(layer)
            u = c.b * scale  # the scaling ``layer_grads`` applies, bit for bit
            for k, name in layer.names.items():
                if k == "weight":
                    yield name, params[k].detach(), Outer(u, c.x.detach())
                elif k == "bias":  # ``b3.sum(1)`` over one row is ``u`` itself
                    yield name, params[k].detach(), u.clone()

    # -- checks --------------------------------------------------------------------
    def _check_sums(self) -> None:
        """Move parameters whose ``Σ_n ĝ_n`` misses ``.grad`` to the model fallback.

        A parameter also used outside its module (tied weights, ``x @ w.t()`` in
        a parent's ``forward``) gets only part of its gradient from its module's
        rule; re-running the whole model serves it exactly (``reassign``). What
        the whole model cannot explain either (a loss term on the parameters
        themselves, ``.grad`` accumulated over several backward passes) is
        reported as not covered.
        """
        grads = [self.grad(p) for _, p in self.engine.params]
        norms = [g.norm() for g in grads if g is not None]
        # A gradient below float32 round-off of the model's (a bias that a
        # following InstanceNorm cancels) is zero: nothing to check.
        self._floor = 1e-6 * float(torch.stack(norms).norm()) if norms else 0.0
        bad, worst = self._mismatches(self.layers)
        unserved = self._unserved()
        if unserved:
            # A module run outside ``__call__`` (``module.forward(x)``) or a
            # tensor computed outside the module records no call: a gradient
            # without per-sample terms.
            bad += unserved
            worst = max(worst, 1.0)
        if not bad:
            return
        self.moved = bad
        self.engine.reassign(
            bad,
            "per-sample gradients of its module do not sum to .grad (relative "
            f"difference up to {worst:.1e}): used outside its module (tied?), or "
            "the loss uses an output other than its first (an RNN's h_n)",
        )
        self._collect()
        root = [
            (layer, calls) for layer, calls in self.layers if layer is self.engine.root
        ]
        still, worst = self._mismatches(root)
        if still:
            for layer, _ in root:
                for k in [k for k, n in layer.names.items() if n in still]:
                    del layer.names[k]
                    if isinstance(layer.rule, FuncRule):
                        layer.rule.names.remove(k)
            self.engine._not_covered(
                still,
                "per-sample gradients of the whole model do not sum to .grad either "
                f"(relative difference up to {worst:.1e}): a loss term on the "
                "parameters, or .grad accumulated over several backward passes"
                + (_ALL_REDUCED.format(world=world_size()) if world_size() > 1 else ""),
            )
            self._collect()

    def _unserved(self) -> list[str]:
        """Names a layer serves whose module recorded no call, yet have a gradient."""
        served = {n for layer, _ in self.layers for n in layer.names.values()}
        out = []
        for layer in self.engine.layers:
            if layer is self.engine.root:
                continue
            for k, name in layer.names.items():
                if name in served:
                    continue
                g = self.grad(layer.module.get_parameter(k))
                if g is None:
                    continue
                if float(g.norm()) > self._floor:
                    out.append(name)
        return out

    def _mismatches(
        self, layers: list[tuple[Layer, list[Call]]]
    ) -> tuple[list[str], float]:
        """Tracked names whose ``Σ_n ĝ_n`` differs from ``.grad``, and the worst."""
        bad: list[str] = []
        worst = 0.0
        merged: dict[int, tuple[Layer, list[Call]]] = {}
        for layer, calls in layers:  # ``.grad`` sums over every forward pass
            merged.setdefault(id(layer), (layer, []))[1].extend(calls)
        for layer, calls in merged.values():
            params = self._params(layer)
            sums: dict[str, Tensor] = {}
            for c in calls:
                assert c.b is not None
                rule = layer.rule.bind(c)
                for k, g in rule.grad_sum(layer.module, c.x, c.b).items():
                    sums[k] = sums[k] + g if k in sums else g
            for k, g in sums.items():
                if k not in params:
                    continue
                ref = self.grad(params[k])
                if ref is None:
                    continue
                err = float((g.detach() - ref).norm())
                scale = float(ref.norm())
                # bf16/fp16 autocast rounds each output gradient: allow for it.
                eps = max((c.eps for c in calls), default=0.0)
                if err > max(1e-3, 8 * eps) * scale + max(self._floor, 1e-12):
                    bad.append(layer.names[k])
                    worst = max(worst, err / max(scale, 1e-30))
        return bad, worst


def _b(call: Call) -> Tensor:
    """The call's output gradient (recorded: the engine collected only such calls)."""
    assert call.b is not None
    return call.b


def _l2(rule: LayerRule, module: nn.Module, call: Call) -> dict[str, Tensor]:
    return rule.batch_l2(module, call.x, _b(call))


def _sgs(rule: LayerRule, module: nn.Module, call: Call) -> dict[str, Tensor]:
    return rule.sum_grad_squared(module, call.x, _b(call))


def _dot(
    direction: dict[str, Tensor], rule: LayerRule, module: nn.Module, call: Call
) -> dict[str, Tensor]:
    return rule.batch_dot(module, call.x, _b(call), direction)


def _dots_of(
    directions: list[dict[str, Tensor]],
    rule: LayerRule,
    module: nn.Module,
    call: Call,
) -> dict[str, Tensor]:
    """``"i:k"`` -> ``ĝ_n · directions[i][k]``, per-sample gradients built once."""
    out: dict[str, Tensor] = {}
    for k, g in rule.batch_grads(module, call.x, _b(call)).items():
        flat = g.flatten(1)
        for i, d in enumerate(directions):
            if k in d:
                out[f"{i}:{k}"] = flat @ d[k].reshape(-1).to(flat.dtype)
    return out


_ALL_REDUCED = (
    ", or .grad all-reduced over {world} processes (DistributedDataParallel: pass "
    "the wrapped model to the Cockpit, which then reads this process's gradients)"
)
