"""Twice-differentiable attention, only on the steps that differentiate twice.

Hessian-vector products (HessTrace, HessMaxEV) and Alpha's per-sample slopes
differentiate through the backward graph of the user's forward pass. The fused
``scaled_dot_product_attention`` kernels (flash attention on CPU; flash,
memory-efficient and cuDNN attention on CUDA) have no derivative of their
backward (``derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward
is not implemented``), and the kernel is chosen when the forward runs, i.e.
before ``cockpit.step`` is entered. So the choice is made one step ahead, when
the cockpit already decides whether the next step is tracked: on those forward
passes the math kernel (plain matmuls and softmax, twice differentiable, same
values up to round-off) is the only one enabled; every other forward pass keeps
the fast kernels. Models with recurrent layers also run those forward passes
without cuDNN: its RNN kernels have no double backward either.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.hooks import RemovableHandle

from glasscockpit.agent.engine.hooks import eager


class _CudnnOff:
    """cuDNN disabled, the user's setting restored on the way out."""

    def __enter__(self) -> None:
        self._before = torch.backends.cudnn.enabled
        torch.backends.cudnn.enabled = False

    def __exit__(self, *exc: object) -> None:
        torch.backends.cudnn.enabled = self._before


class MathAttention:
    """Enables only the math SDPA kernel during the model's forward, when wanted.

    A forward pre-hook on the root module enters ``sdpa_kernel(SDPBackend.MATH)``
    if ``wanted`` is set and gradients are enabled; a forward hook registered
    with ``always_call=True`` leaves it, also when the forward raises. The
    setting covers everything the forward calls (``nn.MultiheadAttention``,
    ``F.scaled_dot_product_attention`` in custom modules), since the SDPA backend
    flags are process-wide. Nested calls of the root module enter it once.

    Args:
        model: the root module whose forward passes are switched.
    """

    def __init__(self, model: nn.Module) -> None:
        self._model = model
        self._recurrent = any(isinstance(m, nn.RNNBase) for m in model.modules())
        self._wanted = False
        self._depth = 0
        self._active: Any = None
        self._handles: list[RemovableHandle] = []

    @property
    def wanted(self) -> bool:
        """Switch the next forward passes to the math kernel.

        The hooks are attached only while wanted: a module with hooks takes the
        slow call path, which the other steps should not pay.
        """
        return self._wanted

    @wanted.setter
    def wanted(self, value: bool) -> None:
        self._wanted = value
        if value and not self._handles:
            self._handles = [
                self._model.register_forward_pre_hook(eager(self._enter)),
                self._model.register_forward_hook(eager(self._leave), always_call=True),
            ]
        elif not value and self._handles and self._depth == 0:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()

    @property
    def active(self) -> bool:
        """Whether a forward pass is running under the math kernel right now."""
        return self._active is not None

    def _enter(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        del module, args
        if self._depth == 0 and self.wanted and torch.is_grad_enabled():
            ctxs: list[Any] = [sdpa_kernel([SDPBackend.MATH])]
            if self._recurrent:
                ctxs.append(_CudnnOff())
            for ctx in ctxs:
                ctx.__enter__()
            self._active = ctxs
        self._depth += 1

    def _leave(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        del module, args, output
        self._depth = max(self._depth - 1, 0)
        if self._depth == 0 and self._active is not None:
            ctxs, self._active = self._active, None
            for ctx in reversed(ctxs):
                ctx.__exit__(None, None, None)

    def remove(self) -> None:
        """Remove both hooks (leaving the math kernel if a forward is running)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._depth = 1
        self._leave(nn.Module(), (), None)
