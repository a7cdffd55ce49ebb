"""What every adapter does with the Cockpit: open, feed and close its steps.

A framework calls the adapter at points of its loop; ``StepDriver`` turns them
into one ``with cockpit.step(...)`` per optimizer step: entered before the first
forward pass of the step (so per-sample instruments record it), given the loss
of each micro-batch as the framework produces it, left before the optimizer
step. It is the one step implementation, ``Cockpit.step``, driven by hand.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from glasscockpit.agent.cockpit import Cockpit

log = logging.getLogger("glasscockpit.agent")

#: Metric names of the frameworks -> ``Cockpit.log`` splits and metrics.
_SPLITS = {
    "train": "train",
    "training": "train",
    "val": "valid",
    "valid": "valid",
    "validation": "valid",
    "eval": "valid",
    "test": "test",
}
_METRICS = {"loss": "loss", "acc": "accuracy", "accuracy": "accuracy"}


def log_keyword(name: str) -> str | None:
    """The ``Cockpit.log`` keyword of a framework's metric name, or None.

    ``eval_loss``, ``val/acc``, ``valid_accuracy_epoch``, ``test_loss`` map to
    ``valid_loss``, ``valid_accuracy``, ``valid_accuracy``, ``test_loss``; a bare
    ``loss`` is the training loss. Other metrics (F1, perplexity) have no series.
    """
    parts = [p for p in re.split(r"[/._\-\s]+", name.lower()) if p]
    if parts and parts[-1] in ("epoch", "step"):
        parts = parts[:-1]
    if len(parts) == 1 and parts[0] == "loss":
        return "train_loss"
    if len(parts) != 2:
        return None
    split, metric = _SPLITS.get(parts[0]), _METRICS.get(parts[1])
    if split is None or metric is None:
        return None
    return f"{split}_{metric}"


def forward_metrics(cockpit: Cockpit, step: int, metrics: Mapping[str, Any]) -> None:
    """Send the metrics ``Cockpit.log`` has series for (the first of each kind)."""
    values: dict[str, float] = {}
    for name, value in metrics.items():
        key = log_keyword(name)
        if key is None or key in values:
            continue
        try:
            values[key] = float(value)
        except (TypeError, ValueError):
            continue
    if values:
        cockpit.log(step, **values)


class StepDriver:
    """Opens, feeds and closes ``cockpit.step`` at a framework's call points.

    Args:
        cockpit: the run's Cockpit.
    """

    def __init__(self, cockpit: Cockpit) -> None:
        self.cockpit = cockpit
        self._step: contextlib.AbstractContextManager[bool] | None = None
        self._losses: list[Tensor] = []
        self._per_sample: list[Tensor | None] = []
        self._sizes: list[int | None] = []
        #: How the parts add up to the step's loss: "mean" of the micro-batches'
        #: means, or "sum" (parts already scaled to the whole step).
        self.reduce = "mean"

    @property
    def open(self) -> bool:
        """Whether a step is open."""
        return self._step is not None

    def begin(
        self, step: int, loss: Tensor | None = None, losses: Tensor | None = None
    ) -> None:
        """Enter ``cockpit.step(step)``.

        Before the step's first forward pass (no ``loss``), or between the forward
        and the backward pass of a step of one micro-batch, with its ``loss``
        graph: the instruments that differentiate it (curvature) then work too.
        """
        if self._step is not None:
            self.end()
        self._losses, self._per_sample, self._sizes = [], [], []
        self.reduce = "mean"
        size = None if losses is None else int(losses.shape[0])
        cm = self.cockpit.step(step, loss=loss, batch_size=size, losses=losses)
        cm.__enter__()
        self._step = cm

    def add(
        self,
        loss: Tensor | None,
        losses: Tensor | None = None,
        batch_size: int | None = None,
    ) -> None:
        """One micro-batch's loss (and per-sample losses), as the step makes it."""
        if self._step is None or loss is None:
            return
        self._losses.append(loss.detach())
        self._per_sample.append(None if losses is None else losses.detach())
        self._sizes.append(batch_size)

    def end(self, exc: BaseException | None = None) -> None:
        """Hand the step its loss and leave it (instruments run), before the update."""
        cm, self._step = self._step, None
        if cm is None:
            return
        if exc is None:
            self._hand_over()
            cm.__exit__(None, None, None)
        else:
            cm.__exit__(type(exc), exc, exc.__traceback__)

    def _hand_over(self) -> None:
        if not self._losses:
            return
        total = torch.stack([v.float() for v in self._losses]).sum()
        if self.reduce == "mean":
            total = total / len(self._losses)
        per = self._per_sample
        losses = None
        if all(p is not None for p in per):
            losses = torch.cat([p for p in per if p is not None])
        sizes = self._sizes
        size = sum(s for s in sizes if s is not None) if None not in sizes else None
        self.cockpit.set_loss(total, losses, size)
