"""Run metadata: the default run id and what the Hello frame says about the run."""

from __future__ import annotations

import os
import re
import secrets
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn


def default_run_id() -> str:
    """``<script name>-<YYYYmmdd-HHMMSS>-<6 random hex>``, safe as a run id.

    The random part keeps processes started in the same second (a sweep, one
    container each, all pid 1) apart.
    """
    stem = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else "run"
    stem = re.sub(r"[^A-Za-z0-9._-]", "-", stem).strip(".-_") or "run"
    return f"{stem[:80]}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def plain(value: Any, depth: int = 0) -> Any:
    """Metadata made msgpack-safe: containers kept, other objects as their repr."""
    if isinstance(value, bool | str | float | None):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else str(value)
    if depth < 6 and isinstance(value, dict):
        return {str(k)[:200]: plain(v, depth + 1) for k, v in list(value.items())[:500]}
    if depth < 6 and isinstance(value, list | tuple):
        return [plain(v, depth + 1) for v in value[:500]]
    return repr(value)[:2000]


def model_meta(
    model: nn.Module, optimizer: torch.optim.Optimizer | None
) -> dict[str, Any]:
    """Model, optimizer and host facts shown with the run on the dashboard."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    meta: dict[str, Any] = {
        "model": type(model).__name__,
        "model_summary": str(model)[:4000],
        "parameters": int(sum(p.numel() for p in params)),
        "device": str(params[0].device) if params else "cpu",
        "torch": torch.__version__,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.time(),
        # Tells this run apart from another one given the same id: the server
        # resumes a run only for the same instance (reconnects, sync of its spill
        # file) and stores another instance as a new run with a suffix.
        "instance": secrets.token_hex(8),
        # Read by the diagnosis rules: shapes give a layer's fan-in (the input
        # scale from the first layer's gradients), the initial norm makes the
        # update size relative (‖Δθ‖/‖θ‖).
        "parameter_shapes": {n: list(p.shape) for n, p in _sized(named)[:500]},
        "parameter_norm": _norm([p for _, p in _sized(named)]),
    }
    if optimizer is not None:
        meta["optimizer"] = type(optimizer).__name__
        meta["optimizer_defaults"] = {
            k: v
            for k, v in optimizer.defaults.items()
            if isinstance(v, int | float | str | bool)
        }
    return meta


def _sized(
    named: list[tuple[str, nn.Parameter]],
) -> list[tuple[str, nn.Parameter]]:
    """Parameters with data (not lazy modules' placeholders, not on "meta")."""
    lazy = nn.parameter.UninitializedParameter
    return [(n, p) for n, p in named if not isinstance(p, lazy) and not p.is_meta]


def _norm(params: Sequence[torch.Tensor]) -> float:
    """‖θ‖₂ over all tensors (one device sync)."""
    if not params:
        return 0.0
    with torch.no_grad():
        dev = params[0].device  # model-parallel tensors meet on one device
        norms = torch.stack(
            [torch.linalg.vector_norm(p.float()).to(dev) for p in params]
        )
        return float(torch.linalg.vector_norm(norms).cpu())
