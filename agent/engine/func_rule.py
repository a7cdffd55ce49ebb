"""The general fallback: per-sample gradients of any module through ``torch.func``.

For a module without a closed-form rule (a custom module with raw
``nn.Parameter``s, ``nn.MultiheadAttention``, or the whole model for parameters
that are tied or used functionally), the engine records the call's arguments and
the gradient ``b`` of the loss with respect to the module's output. Sample ``n``'s
gradient is then the vector-Jacobian product of the module applied to sample
``n`` alone, ``J_nᵀ b_n``: ``vmap`` over samples of ``vjp`` of
``functional_call`` on a batch of one (the idea of Opacus' functorch grad
sampler). This needs neither the batch's targets nor the loss function: the
recorded ``b`` already splits the loss into per-sample terms, so ``cockpit.step``
needs no extra argument.

Assumptions, checked where possible: the module treats samples independently
(positional tensor arguments are batched along axis 0, keyword tensors are shared
unless the rule lists them as batched), and its re-run is deterministic (modules
with active dropout are refused). Samples are processed in chunks that bound the
per-sample gradients held at once (``max_elements``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from glasscockpit.agent.engine.errors import EngineError
from glasscockpit.agent.engine.rules import LayerRule

#: torch's warning when an op under ``vmap`` has no batching rule (it falls back
#: to a loop over the batch: slower, still exact).
_NO_BATCHING_RULE = "There is a performance drop because we have not yet implemented"


class Reentry:
    """Set while a fallback re-runs a module, so the engine's hooks stay quiet."""

    active = False


REENTRY = Reentry()


@contextlib.contextmanager
def _native_rnn_kernels() -> Iterator[None]:
    """OneDNN and cuDNN off (set directly: ``backends.*.flags`` warns in 2.13)."""
    mkldnn, cudnn = torch._C._get_mkldnn_enabled(), torch._C._get_cudnn_enabled()
    torch._C._set_mkldnn_enabled(False)
    torch._C._set_cudnn_enabled(False)
    try:
        yield
    finally:
        torch._C._set_mkldnn_enabled(mkldnn)
        torch._C._set_cudnn_enabled(cudnn)


#: What a model's re-run on one sample may raise (a ``ValueError`` from a loss
#: computed inside the model, e.g. Hugging Face's ``labels=``): that step's
#: readings are None with the reason, the instruments stay on.
RERUN_ERRORS = (RuntimeError, ValueError, TypeError, IndexError)

#: Per-sample gradient values held at once by one chunk of a fallback.
MAX_ELEMENTS = 1 << 22


def _first_tensor(value: Any) -> Tensor | None:
    """The tensor a module's (or model's) output is about.

    A tensor; in a tuple or list the first with a batch axis (``(loss, logits)``
    puts a 0-d loss first, ``(out, (h, c))`` the output); in a mapping
    ``"logits"`` when present (Hugging Face style), else the first such value.
    """
    if isinstance(value, Tensor):
        return value
    if isinstance(value, Mapping):
        logits = value.get("logits")
        if isinstance(logits, Tensor):
            return logits
        value = list(value.values())
    if isinstance(value, tuple | list):
        for v in value:
            if isinstance(v, Tensor) and v.dim() > 0:
                return v
    return None


def active_dropout(module: nn.Module) -> str | None:
    """Name of a dropout (or attention dropout) that would make a re-run differ."""
    for name, m in module.named_modules():
        p = (
            getattr(m, "p", None)
            if isinstance(m, nn.modules.dropout._DropoutNd)
            else None
        )
        if isinstance(m, nn.MultiheadAttention):
            p = m.dropout
        if p:
            return name or type(module).__name__
    return None


class FuncRule(LayerRule):
    """``torch.func`` per-sample gradients of one module's parameters.

    Args:
        names: local (possibly dotted) names of the parameters this rule serves;
            the engine may extend the list (e.g. tied weights found at a step).
        label: the engine name in the coverage map.
    """

    label = "torch.func"
    needs_args = True
    #: Keyword arguments batched along axis 0 like the positional ones.
    batched_kwargs: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, names: list[str] | None = None, label: str | None = None):
        self.names: list[str] = list(names or [])
        self.label_text = label or self.label
        #: vmap failed once for this module: re-run it sample by sample.
        self.sample_loop = False

    def refuse(self, module: nn.Module) -> str | None:
        """Why this module cannot be re-run per sample, or None."""
        for name, m in module.named_modules():
            if isinstance(m, nn.Embedding | nn.EmbeddingBag) and m.sparse:
                return (
                    f"sparse gradients of {name or type(m).__name__!r} "
                    "(sparse=True): no per-sample re-run"
                )
        drop = active_dropout(module)
        if drop is not None:
            return (
                f"dropout in {drop!r}: a per-sample re-run cannot reproduce its "
                "random mask (refused whatever the mode; p=0 is accepted)"
            )
        return None

    def bind(self, call: Any) -> LayerRule:
        """The rule for one call: its arguments are what the re-run needs."""
        return BoundFuncRule(self, call)

    def batched(self, call: Any) -> frozenset[str]:
        """Keyword arguments of ``call`` split per sample (default: the class's)."""
        del call
        return self.batched_kwargs


#: Keyword arguments of a model call shared by all samples even when their
#: leading size equals the batch size (masks over positions, per-head masks).
SHARED_KWARGS = frozenset(
    {"attn_mask", "mask", "src_mask", "tgt_mask", "memory_mask", "head_mask"}
)


class ModelRule(FuncRule):
    """The whole model re-run per sample: keyword tensors with a batch axis split.

    Hugging Face models are called with keywords (``input_ids=``,
    ``attention_mask=``, ``token_type_ids=``, ``labels=``, ``pixel_values=`` ...,
    what ``Trainer`` does): each keyword tensor whose leading size is the
    batch's is that sample's row in the re-run; other keywords (flags, shared
    masks in ``SHARED_KWARGS``, tensors of another leading size) are passed
    whole. The engine's probe (``batch_axes``) checks the split: the model run
    on a few samples cut this way must give their outputs.
    """

    def batched(self, call: Any) -> frozenset[str]:
        """Keyword tensors of ``call`` whose leading axis is the batch."""
        if call.parent is not None:  # a few samples cut from a recorded call
            return self.batched(call.parent)
        hit: frozenset[str] | None = call.cache.get("batched_kwargs")
        if hit is None:
            n = call.x.shape[0] if call.x.dim() else -1
            hit = call.cache["batched_kwargs"] = frozenset(
                k
                for k, v in call.kwargs.items()
                if isinstance(v, Tensor)
                and v.dim() > 0
                and v.shape[0] == n
                and k not in SHARED_KWARGS
            )
        return hit


class BoundFuncRule(LayerRule):
    """A ``FuncRule`` with one call's arguments; reductions run chunk by chunk."""

    def __init__(self, rule: FuncRule, call: Any) -> None:
        self.rule, self.call = rule, call

    # -- per-sample gradients ---------------------------------------------------------
    def _run(
        self,
        module: nn.Module,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        b: Tensor,
    ) -> dict[str, Tensor]:
        """``J_nᵀ b_n`` for every sample of ``args`` (all batched along axis 0)."""
        n = b.shape[0]
        # Batched tensors once each: identity matters (attention takes its
        # self-attention path only when query is key is value).
        batched: list[Tensor] = []
        slot: dict[int, int] = {}

        def place(v: Any, batch: bool) -> Any:
            if isinstance(v, Tensor) and batch and v.dim() > 0 and v.shape[0] == n:
                if id(v) not in slot:
                    slot[id(v)] = len(batched)
                    batched.append(v)
                return ("__batched__", slot[id(v)])
            return v

        arg_t = [place(a, True) for a in args]
        split = self.rule.batched(self.call)
        kw_t = {k: place(v, k in split) for k, v in kwargs.items()}
        params = {k: module.get_parameter(k).detach() for k in self.rule.names}

        def fill(v: Any, items: tuple[Tensor, ...]) -> Any:
            if isinstance(v, tuple) and len(v) == 2 and v[0] == "__batched__":
                return items[v[1]].unsqueeze(0)
            return v

        def one(bn: Tensor, *items: Tensor) -> dict[str, Tensor]:
            a1 = tuple(fill(a, items) for a in arg_t)
            k1 = {k: fill(v, items) for k, v in kw_t.items()}

            def fwd(p: dict[str, Tensor]) -> Tensor:
                out = _first_tensor(functional_call(module, p, a1, k1))
                if out is None:
                    raise RuntimeError("the module returned no tensor")
                return out

            pull = vjp(fwd, params)[1]
            grads: dict[str, Tensor] = pull(bn.unsqueeze(0))[0]
            return grads

        REENTRY.active = True
        kept = contextlib.ExitStack()
        kept.enter_context(backpack_io_kept())
        try:
            if not self.rule.sample_loop:
                try:
                    # The math attention kernel has batching rules; the fused CPU
                    # kernel would run sample by sample through vmap's slow
                    # fallback (and warn). Likewise oneDNN's and cuDNN's fused RNN
                    # kernels have none; the native ones decompose.
                    with (
                        sdpa_kernel([SDPBackend.MATH]),
                        _native_rnn_kernels(),
                        warnings.catch_warnings(),
                    ):
                        # An op without a batching rule still runs (vmap loops
                        # over samples); its warning would reach the user's log
                        # at every tracked step.
                        warnings.filterwarnings("ignore", message=_NO_BATCHING_RULE)
                        result: dict[str, Tensor] = vmap(one, randomness="different")(
                            b, *batched
                        )
                    return result
                except RERUN_ERRORS:
                    # Some modules cannot run under vmap at all (RNNs update an
                    # unbatched hidden state in place, data-dependent checks of
                    # Hugging Face models): loop over samples, from now on.
                    self.rule.sample_loop = True
            try:
                with _native_rnn_kernels():  # oneDNN's LSTM has no torch.func vjp
                    rows = [one(b[i], *(t[i] for t in batched)) for i in range(n)]
            except RERUN_ERRORS as exc:
                # Report, never crash: the instruments say which module and why
                # (at this step: a later step's batch may re-run).
                raise EngineError(
                    f"torch.func could not re-run {type(module).__name__} per "
                    f"sample: {str(exc).splitlines()[0][:300]}"
                ) from exc
            return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
        finally:
            REENTRY.active = False
            kept.close()

    def _chunks(
        self, module: nn.Module, b: Tensor
    ) -> Iterator[tuple[slice, dict[str, Tensor]]]:
        per_sample = sum(module.get_parameter(k).numel() for k in self.rule.names)
        n = b.shape[0]
        size = max(1, min(n, MAX_ELEMENTS // max(per_sample, 1)))
        args, kwargs = self.call.args, self.call.kwargs
        split = self.rule.batched(self.call)
        for s in range(0, n, size):
            part = slice(s, s + size)
            yield (
                part,
                self._run(
                    module,
                    tuple(_cut(a, part, n) for a in args),
                    {
                        k: _cut(v, part, n) if k in split else v
                        for k, v in kwargs.items()
                    },
                    b[part],
                ),
            )

    # -- LayerRule -----------------------------------------------------------------
    def batch_grads(self, module: nn.Module, x: Tensor, b: Tensor) -> dict[str, Tensor]:
        """``ĝ_n`` per served parameter, ``[B, *shape]``, built in chunks."""
        del x
        parts: dict[str, list[Tensor]] = {}
        for _, g in self._chunks(module, b):
            for k, v in g.items():
                parts.setdefault(k, []).append(v)
        return {k: torch.cat(v) for k, v in parts.items()}

    def batch_l2(self, module: nn.Module, x: Tensor, b: Tensor) -> dict[str, Tensor]:
        """``‖ĝ_n‖²`` chunk by chunk."""
        del x
        parts: dict[str, list[Tensor]] = {}
        for _, g in self._chunks(module, b):
            for k, v in g.items():
                parts.setdefault(k, []).append(v.flatten(1).square().sum(1))
        return {k: torch.cat(v) for k, v in parts.items()}

    def batch_dot(
        self, module: nn.Module, x: Tensor, b: Tensor, grads: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """``ĝ_n · G`` chunk by chunk."""
        del x
        parts: dict[str, list[Tensor]] = {}
        for _, g in self._chunks(module, b):
            for k, v in g.items():
                if k in grads:
                    d = grads[k].reshape(-1).to(v.dtype)
                    parts.setdefault(k, []).append(v.flatten(1) @ d)
        return {k: torch.cat(v) for k, v in parts.items()}

    def sum_grad_squared(
        self, module: nn.Module, x: Tensor, b: Tensor
    ) -> dict[str, Tensor]:
        """``Σ_n ĝ_n²`` chunk by chunk."""
        del x
        out: dict[str, Tensor] = {}
        for _, g in self._chunks(module, b):
            for k, v in g.items():
                s = v.square().sum(0)
                out[k] = out[k] + s if k in out else s
        return out

    def grad_sum(self, module: nn.Module, x: Tensor, b: Tensor) -> dict[str, Tensor]:
        """``Σ_n ĝ_n`` chunk by chunk."""
        del x
        out: dict[str, Tensor] = {}
        for _, g in self._chunks(module, b):
            for k, v in g.items():
                s = v.sum(0)
                out[k] = out[k] + s if k in out else s
        return out


def _cut(value: Any, part: slice, n: int) -> Any:
    if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == n:
        return value[part]
    return value


class AttentionRule(FuncRule):
    """``nn.MultiheadAttention`` (``batch_first=True``): all four of its tensors.

    ``in_proj_weight`` is a raw parameter and ``out_proj`` is applied
    functionally (its module hook never fires), so the module is re-run as a
    whole; ``key_padding_mask`` is per sample, ``attn_mask`` shared.
    """

    label = "attention (torch.func)"
    claims_subtree = True
    batched_kwargs: ClassVar[frozenset[str]] = frozenset({"key_padding_mask"})

    def refuse(self, module: nn.Module) -> str | None:
        """Sequence-first attention would be vmapped over positions."""
        assert isinstance(module, nn.MultiheadAttention)
        if not module.batch_first:
            return "nn.MultiheadAttention with batch_first=False (samples on axis 1)"
        return super().refuse(module)


#: Module types whose fallback is a dedicated ``FuncRule`` subclass. Kept apart
#: from ``RULES`` (singletons): fallback rules hold the names they serve.
FUNC_RULES: dict[type[nn.Module], type[FuncRule]] = {
    nn.MultiheadAttention: AttentionRule,
}

__all__ = [
    "FUNC_RULES",
    "MAX_ELEMENTS",
    "REENTRY",
    "AttentionRule",
    "BoundFuncRule",
    "FuncRule",
    "ModelRule",
    "active_dropout",
]


def backpack_io_kept() -> contextlib.AbstractContextManager[Any]:
    """Keep BackPACK's stored inputs/outputs of a ``backpack.extend``-ed model.

    Its forward hooks save each module's input and output for its own backward
    pass (DiagHessian for HessTrace and TIC); our re-runs of modules (per-sample
    slices, vmapped tensors without storage) would replace the recorded pass's.
    """
    try:
        from backpack import disable
    except ImportError:  # pragma: no cover - BackPACK is in the agent extra
        return contextlib.nullcontext()
    kept: contextlib.AbstractContextManager[Any] = disable()
    return kept
