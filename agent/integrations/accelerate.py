"""Accelerate loops: ``cockpit = attach(accelerator, model, optimizer)``.

The model and optimizer as ``accelerator.prepare`` returned them: the Cockpit
reads through ``AcceleratedOptimizer`` and the DDP wrapper, takes the loss scale
of ``accelerator.scaler`` (fp16) off the gradients, and sends the accelerator's
setup (mixed precision, processes, accumulation steps) as the run's ``config``.
The loop stays the hand-written one::

    cockpit = attach(accelerator, model, optimizer, run="my-run")
    for step, (x, y) in enumerate(loader):
        losses = F.cross_entropy(model(x), y, reduction="none")
        loss = losses.mean()
        with cockpit.step(step, loss=loss, losses=losses):
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)  # not seen
        optimizer.step()
        optimizer.zero_grad()
    cockpit.close()

With ``accelerator.accumulate(model)``, ``micro_batch`` opens one
``cockpit.step`` per optimizer step around all its micro-batches::

    with accelerator.accumulate(model):
        losses = F.cross_entropy(model(x), y, reduction="none")
        with micro_batch(cockpit, accelerator, losses.mean(), losses):
            accelerator.backward(losses.mean())
        optimizer.step()
        optimizer.zero_grad()

Reads everything ``Cockpit`` reads in a hand-written loop (curvature too, when
the loss is given on entry: without accumulation); with ``micro_batch`` the
step opens before the first micro-batch's backward, so the curvature
instruments (``tic_*``, ``hess_*``) read None with the reason.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

from torch import Tensor, nn

from glasscockpit.agent.cockpit import Cockpit
from glasscockpit.agent.integrations.driver import StepDriver

_DRIVERS: weakref.WeakKeyDictionary[Cockpit, _Steps] = weakref.WeakKeyDictionary()


class _Steps:
    """A Cockpit's driver and its count of optimizer steps (for ``micro_batch``)."""

    def __init__(self, cockpit: Cockpit) -> None:
        self.driver = StepDriver(cockpit)
        self.step = 0


def attach(
    accelerator: Any,
    model: nn.Module,
    optimizer: Any = None,
    *,
    config: Mapping[str, Any] | None = None,
    **options: Any,
) -> Cockpit:
    """A ``Cockpit`` for an Accelerate loop (options as ``Cockpit``'s).

    Args:
        accelerator: the ``accelerate.Accelerator``.
        model: the prepared model.
        optimizer: the prepared optimizer (``AcceleratedOptimizer``).
        config: the run's hyperparameters, added to the accelerator's setup.
        **options: ``run=``, ``server=``, ``instruments=``, ... of ``Cockpit``.
    """
    setup: dict[str, Any] = {"framework": "accelerate"}
    for key in ("mixed_precision", "num_processes", "gradient_accumulation_steps"):
        value = getattr(accelerator, key, None)
        if value is not None:
            setup[key] = value if isinstance(value, int | float | str) else str(value)
    for key in ("distributed_type", "device"):
        if hasattr(accelerator, key):
            setup[key] = str(getattr(accelerator, key))
    options.setdefault("scaler", getattr(accelerator, "scaler", None))
    return Cockpit(model, optimizer, config={**setup, **(config or {})}, **options)


@contextlib.contextmanager
def micro_batch(
    cockpit: Cockpit,
    accelerator: Any,
    loss: Tensor | None = None,
    losses: Tensor | None = None,
) -> Iterator[None]:
    """Wrap one micro-batch's backward inside ``accelerator.accumulate(model)``.

    The first micro-batch of an optimizer step opens ``cockpit.step`` (numbered
    by optimizer steps), the one on which Accelerate syncs gradients closes it;
    the step's loss is the micro-batches' mean.

    Args:
        cockpit: from ``attach``.
        accelerator: the ``accelerate.Accelerator``.
        loss: this micro-batch's mean loss.
        losses: its per-sample losses, for Alpha.
    """
    steps = _DRIVERS.get(cockpit)
    if steps is None:
        steps = _DRIVERS[cockpit] = _Steps(cockpit)
    driver = steps.driver
    if not driver.open:
        driver.begin(steps.step)
    try:
        yield
    except BaseException as exc:
        driver.end(exc)
        raise
    size = None if losses is None else int(losses.shape[0])
    driver.add(loss, losses, size)
    if getattr(accelerator, "sync_gradients", True):
        driver.end()
        steps.step += 1
