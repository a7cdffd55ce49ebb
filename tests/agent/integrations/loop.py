"""The hand-written loop the integrations are compared with, and the comparison.

torchvision's wheel on this machine cannot load its compiled ops into the CPU
torch (``operator torchvision::nms does not exist`` on import), and torchmetrics
(Lightning) and transformers import it. ``import_torchvision`` declares the op
schemas its import registers fake kernels for; no torchvision op is used here.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from glasscockpit.agent import Cockpit, always
from glasscockpit.agent.instruments import BY_NAME, PRESETS, Instrument
from glasscockpit.protocol import Readings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
_KEEP: list[Any] = []


def import_torchvision() -> None:
    """Import torchvision (if installed) even when its compiled ops do not load."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
        for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
            del sys.modules[name]
        if "torchvision" not in {lib.ns for lib in _KEEP}:
            lib = torch.library.Library("torchvision", "DEF")  # noqa: TOR901
            for op in ("nms", "qnms"):
                lib.define(
                    f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
                )
            _KEEP.append(lib)
        import torchvision  # noqa: F401


import_torchvision()

#: Instruments that differentiate the loss before the backward pass: the
#: framework callbacks cannot give them the loss graph there.
CURVATURE = {"tic_diag", "hess_trace", "hess_max_ev"}
#: Every other instrument of ``full``, each on every step.
NAMES = [c.name for c in PRESETS["full"] if c.name not in CURVATURE]


def instruments(names: Sequence[str] = NAMES) -> list[Instrument]:
    return [BY_NAME[n](schedule=always) for n in names]


#: ``(model, x, y) -> (mean loss, per-sample losses)`` of one micro-batch.
LossFn = Callable[[nn.Module, Any, Tensor], tuple[Tensor, Tensor]]


def hand_written(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Sequence[tuple[Any, Tensor]],
    loss_fn: LossFn,
    *,
    accumulate: int = 1,
    clip: float | None = None,
    scheduler: Any = None,
    names: Sequence[str] = NAMES,
    mean: bool = True,
) -> tuple[dict[int, dict[str, Any]], list[dict[str, str]]]:
    """One ``cockpit.step`` per optimizer step, clipping inside it.

    ``mean``: the micro-batches' losses are averaged (else summed, as the
    Hugging Face Trainer does for models that take ``num_items_in_batch``).
    """
    k = accumulate if mean else 1
    cockpit = Cockpit(
        model, optimizer, server=None, instruments=instruments(names), budget=None
    )
    for step in range(len(batches) // accumulate):
        optimizer.zero_grad()
        window = batches[step * accumulate : (step + 1) * accumulate]
        parts = [loss_fn(model, x, y) for x, y in window]
        # One micro-batch: its own loss tensor, as a loop without accumulation.
        one = len(parts) == 1
        loss = parts[0][0] if one else torch.stack([p[0] for p in parts]).sum() / k
        losses = torch.cat([p[1] for p in parts])
        with cockpit.step(step, loss=loss, losses=losses):
            for part, _ in parts:
                (part if one else part / k).backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    cockpit.close()
    return readings_and_errors(cockpit)


def readings_and_errors(
    cockpit: Cockpit,
) -> tuple[dict[int, dict[str, Any]], list[dict[str, str]]]:
    frames = cockpit.transport.frames  # type: ignore[attr-defined]
    errors = [f.errors for f in frames if isinstance(f, Readings) and f.errors]
    return cockpit.readings, errors


def epoch_metrics(cockpit: Cockpit) -> dict[str, dict[str, float]]:
    """Every ``cockpit.log`` value sent: {instrument: {split: last value}}."""
    out: dict[str, dict[str, float]] = {}
    for frame in cockpit.transport.frames:  # type: ignore[attr-defined]
        if isinstance(frame, Readings):
            for key, value in frame.values.items():
                if key.startswith("epoch_") and isinstance(value, dict):
                    out.setdefault(key, {}).update(value)  # type: ignore[arg-type]
    return out


def assert_same(got: Any, want: Any, where: str, rtol: float) -> None:
    if isinstance(want, dict):
        assert set(got) == set(want), where
        for k in want:
            assert_same(got[k], want[k], f"{where}[{k}]", rtol)
    elif want is None:
        assert got is None, where
    elif isinstance(want, Tensor):
        if where.endswith("[counts]"):
            # A value on a bin edge may fall either side after round-off.
            assert (got - want).abs().sum() <= 2, where
        else:
            torch.testing.assert_close(got, want, rtol=rtol, atol=1e-7, msg=where)
    else:
        assert got == pytest.approx(want, rel=rtol, abs=1e-7), where


def assert_readings_equal(
    got: dict[int, dict[str, Any]],
    want: dict[int, dict[str, Any]],
    steps: Sequence[int],
    names: Sequence[str] = NAMES,
    rtol: float = 1e-5,
    totals: bool = False,
) -> None:
    """Readings equal; with ``totals``, the network's totals of per-layer ones."""
    for step in steps:
        for name in names:
            g, w = got[step].get(name), want[step][name]
            assert g is not None, f"{step} {name}"
            if totals and isinstance(w, dict):
                if "total" not in w:
                    continue  # histograms: bins of round-off-dependent edges
                g, w = g["total"], w["total"]
            assert_same(g, w, f"{step} {name}", rtol)
