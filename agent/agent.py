"""Cockpit: the user-facing object attached to a training loop."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import socket
import sys
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from glasscockpit.agent.config import AgentConfig, ingest_url
from glasscockpit.agent.engine import EngineError, HookEngine, StepStats, diag_ggn
from glasscockpit.agent.instruments import Instrument, Reading, resolve
from glasscockpit.agent.needs import RECORDED, Need
from glasscockpit.agent.packing import to_host
from glasscockpit.agent.schedules import describe
from glasscockpit.agent.step import StepData, StepView
from glasscockpit.agent.transport import (
    MemoryTransport,
    Transport,
    TransportStats,
    WebSocketTransport,
)
from glasscockpit.protocol import (
    Array,
    Bye,
    Hello,
    InstrumentSpec,
    Kind,
    PanelSpec,
    Readings,
    Value,
    check_run_id,
)

log = logging.getLogger("glasscockpit.agent")
FAIL_MODES = ("disable", "raise")
_UNSET: Any = object()

#: Instruments fed by ``Cockpit.log``: epoch-level metrics, one series per split.
LOG_SPECS = (
    InstrumentSpec(
        "epoch_loss",
        Kind.PER_LAYER,
        PanelSpec(
            title="Epoch loss",
            y_label="loss",
            log_y=True,
            group="performance",
            help="Train/validation/test loss logged with cockpit.log(...).",
        ),
        "logged",
    ),
    InstrumentSpec(
        "epoch_accuracy",
        Kind.PER_LAYER,
        PanelSpec(
            title="Epoch accuracy",
            y_label="accuracy",
            group="performance",
            help="Train/validation/test accuracy logged with cockpit.log(...).",
        ),
        "logged",
    ),
)
#: ``Cockpit.log`` keyword -> (instrument key, series key).
LOG_KEYS = {
    f"{split}_{metric}": (f"epoch_{metric}", split)
    for split in ("train", "valid", "test")
    for metric in ("loss", "accuracy")
}


def default_run_id() -> str:
    """``<script name>-<YYYYmmdd-HHMMSS>``, safe as a run id."""
    stem = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else "run"
    stem = re.sub(r"[^A-Za-z0-9._-]", "-", stem).strip(".-_") or "run"
    return f"{stem[:80]}-{time.strftime('%Y%m%d-%H%M%S')}"


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


def _model_meta(
    model: nn.Module, optimizer: torch.optim.Optimizer | None
) -> dict[str, Any]:
    params = [p for p in model.parameters() if p.requires_grad]
    meta: dict[str, Any] = {
        "model": type(model).__name__,
        "model_summary": str(model)[:4000],
        "parameters": int(sum(p.numel() for p in params)),
        "device": str(params[0].device) if params else "cpu",
        "torch": torch.__version__,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.time(),
    }
    if optimizer is not None:
        meta["optimizer"] = type(optimizer).__name__
        meta["optimizer_defaults"] = {
            k: v
            for k, v in optimizer.defaults.items()
            if isinstance(v, int | float | str | bool)
        }
    return meta


class Cockpit:
    """Computes instruments on the training device and streams them to a server.

    Usage::

        cockpit = Cockpit(model, optimizer, run="digits-sgd")
        for step, (x, y) in enumerate(loader):
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            with cockpit.step(step, loss=loss):
                loss.backward()
            optimizer.step()
        cockpit.close()

    Args:
        model: the network; every parameter with ``requires_grad`` is tracked.
        optimizer: read for learning rates (and, for some instruments, updates).
        run: run id (letters, digits, ``.``, ``_``, ``-``); default: script name
            and start time.
        server: ``ws://host:port`` of a glasscockpit server, or None to keep readings
            in memory (``cockpit.readings``). Default: ``GLASSCOCKPIT_SERVER`` or
            ``ws://127.0.0.1:8050``.
        instruments: a preset ("economy", "business", "full"), instrument names,
            classes or instances.
        token: bearer token if the server requires one (default ``GLASSCOCKPIT_TOKEN``).
        meta: extra run metadata (config, notes) shown on the dashboard.
        fail_mode: "disable" (default) turns off an instrument that raises, after one
            warning; "raise" re-raises (for tests).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        run: str | None = None,
        server: str | None = _UNSET,
        instruments: str | Iterable[str | Instrument | type[Instrument]] = "economy",
        token: str | None = None,
        meta: dict[str, Any] | None = None,
        fail_mode: str = "disable",
        transport: Transport | None = None,
    ) -> None:
        env = AgentConfig.from_env()
        if fail_mode not in FAIL_MODES:
            raise ValueError(
                f"fail_mode must be one of {FAIL_MODES}, got {fail_mode!r}"
            )
        self.model = model
        self.optimizer = optimizer
        self.fail_mode = fail_mode
        self.run = check_run_id(run or env.run or default_run_id())
        self.params: list[tuple[str, nn.Parameter]] = [
            (n, p) for n, p in model.named_parameters() if p.requires_grad
        ]
        if not self.params:
            raise ValueError(
                "The model has no parameter with requires_grad=True to track"
            )
        specs = [instruments] if isinstance(instruments, str) else list(instruments)
        self.instruments: list[Instrument] = [i for s in specs for i in resolve(s)]
        keys = [i.key for i in self.instruments]
        if len(set(keys)) != len(keys):
            raise ValueError(
                f"Two instruments share a key in {keys}; pass label=... to each"
            )
        self.disabled: dict[str, str] = {}
        self._warned: set[str] = set()
        #: Records layer inputs/output gradients; only when an instrument needs it.
        self.engine: HookEngine | None = None
        if any(i.needs & RECORDED for i in self.instruments):
            self.engine = HookEngine(model, self.params)
            # The first step number is unknown: record the first forward pass.
            self.engine.arm()
        self._checked = False
        self.hello = Hello(
            run=self.run,
            seq=0,
            instruments=tuple(
                InstrumentSpec(i.key, i.kind, i.panel, describe(i.schedule))
                for i in self.instruments
            )
            + LOG_SPECS,
            meta=plain(
                {
                    **_model_meta(model, optimizer),
                    # Which engine serves which parameter's per-sample statistics.
                    **(
                        {"coverage": dict(self.engine.coverage)}
                        if self.engine is not None
                        else {}
                    ),
                    **(meta or {}),
                }
            ),
        )
        self._seq = 0
        self._close_timeout = env.close_timeout
        server = env.server if server is _UNSET else server
        self.transport: Transport
        if transport is not None:
            self.transport = transport
        elif server is None:
            self.transport = MemoryTransport()
        else:
            self.transport = WebSocketTransport(
                ingest_url(server), self.hello, token=token or env.token
            )
        if isinstance(self.transport, MemoryTransport):
            self.transport.send(self.hello)
        self._closed = False
        self._last_time: float | None = None
        atexit.register(_close_at_exit, weakref.ref(self))

    # -- the training-loop API ------------------------------------------------
    @contextlib.contextmanager
    def step(
        self, step: int, loss: Tensor | None = None, batch_size: int | None = None
    ) -> Iterator[bool]:
        """Wrap ``loss.backward()``; yields whether this step is tracked.

        Instruments are computed on exit, after the backward pass and before
        ``optimizer.step()``. Untracked steps cost one schedule check per instrument.

        Per-sample instruments need the step's forward pass recorded: the engine is
        armed at the end of step ``t`` when step ``t + 1`` is due, so number steps
        consecutively, or open this context before the forward pass (then pass no
        ``loss`` here; curvature instruments need it, and the forward, before entry).
        """
        due = [
            i for i in self.instruments if i.key not in self.disabled and i.is_due(step)
        ]
        if not due or self._closed:
            try:
                yield False
            finally:
                self._prepare(step + 1)
            return
        data = self._step_data(due, loss)
        try:
            yield True
            self._track(step, loss, batch_size, due, data)
        finally:
            self._prepare(step + 1)

    def log(self, step: int, **metrics: float) -> None:
        """Record epoch-level metrics at ``step`` (Cockpit's performance gauge).

        Keywords: ``train_loss``, ``valid_loss``, ``test_loss``, ``train_accuracy``,
        ``valid_accuracy``, ``test_accuracy``; sent as instruments ``epoch_loss``
        and ``epoch_accuracy`` with one series per split.
        """
        unknown = sorted(set(metrics) - set(LOG_KEYS))
        if unknown:
            raise ValueError(
                f"Unknown metric(s) {unknown}; expected some of {sorted(LOG_KEYS)}"
            )
        values: dict[str, Value] = {}
        for key, value in metrics.items():
            inst, split = LOG_KEYS[key]
            series = values.setdefault(inst, {})
            assert isinstance(series, dict)
            series[split] = float(value)
        if values and not self._closed:
            self._send_frame(
                Readings(self.run, self._next_seq(), step, time.time(), values, {})
            )

    def close(self) -> None:
        """Send the final frame and flush for at most the configured timeout."""
        if self._closed:
            return
        self._closed = True
        if self.engine is not None:
            self.engine.remove()
        self._send_frame(Bye(run=self.run, seq=self._next_seq(), status="finished"))
        self.transport.close(self._close_timeout)

    def __enter__(self) -> Cockpit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stats(self) -> TransportStats:
        """Delivery counters (sent, acked, resent, dropped, reconnects, state)."""
        return self.transport.stats

    @property
    def readings(self) -> dict[int, dict[str, Any]]:
        """In-memory mode: {step: {instrument key: value}}; arrays as CPU tensors."""
        if not isinstance(self.transport, MemoryTransport):
            raise RuntimeError("readings are kept only when Cockpit(server=None)")
        out: dict[int, dict[str, Any]] = {}
        for frame in self.transport.frames:
            if isinstance(frame, Readings):
                out.setdefault(frame.step, {}).update(
                    {k: _to_python(v) for k, v in frame.values.items()}
                )
        return out

    # -- internals --------------------------------------------------------------
    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _send_frame(self, frame: Hello | Readings | Bye) -> None:
        try:
            self.transport.send(frame)
        except Exception:  # noqa: BLE001 - monitoring never breaks training
            log.exception("glasscockpit: could not queue a frame")

    def _lrs(self) -> list[float]:
        if self.optimizer is None:
            return []
        return [float(g["lr"]) for g in self.optimizer.param_groups if "lr" in g]

    def _param_lrs(self) -> dict[str, float]:
        if self.optimizer is None:
            return {}
        lr_of = {
            id(p): float(g["lr"])
            for g in self.optimizer.param_groups
            if "lr" in g
            for p in g["params"]
        }
        return {n: lr_of[id(p)] for n, p in self.params if id(p) in lr_of}

    def _prepare(self, step: int) -> None:
        """Arm the engine iff an instrument that needs it is due at ``step``."""
        if self.engine is None:
            return
        if not self._closed and any(
            i.needs & RECORDED and i.key not in self.disabled and i.is_due(step)
            for i in self.instruments
        ):
            self.engine.arm()
        else:
            self.engine.disarm()

    def _partial(self, inst: Instrument) -> str | None:
        """A "partial: ..." note when per-sample statistics skip some parameters."""
        engine = self.engine
        if engine is None or not inst.needs & RECORDED or not engine.uncovered:
            return None
        names = engine.uncovered
        return (
            f"partial: {len(names)} of {len(self.params)} parameter tensors not "
            f"covered and left out of this instrument: {', '.join(names[:6])}"
            f"{' ...' if len(names) > 6 else ''} ({engine.coverage[names[0]]})"
        )

    def _step_data(self, due: Sequence[Instrument], loss: Tensor | None) -> StepData:
        """Engine work before the backward pass; per-sample statistics come lazily."""
        engine = self.engine
        if engine is None or not any(i.needs & RECORDED for i in due):
            return StepData()
        if not engine.recording or engine.backpropagated:
            # Opened before the forward pass, or what was recorded belongs to an
            # earlier, finished backward pass: record afresh from here.
            engine.arm()
        ggn: dict[str, Tensor] | Exception | None = None
        if any(Need.DIAG_GGN in i.needs for i in due):
            try:
                if loss is None:
                    raise EngineError(
                        "Curvature instruments need cockpit.step(loss=...)"
                    )
                ggn = diag_ggn(engine, loss)
            except EngineError as exc:
                ggn = exc

        def stats() -> StepStats:
            result = StepStats(engine, check=not self._checked)
            self._checked = True
            if result.moved and isinstance(data.ggn, dict):
                # The curvature passes ran before the check found these
                # parameters used outside their module; from the next step on
                # they are served correctly.
                data.ggn = EngineError(
                    f"Parameters {result.moved[:4]} turned out to be used outside "
                    "their module (tied?) at this step; curvature resumes next step"
                )
            return result

        data = StepData(stats, ggn)
        return data

    def _track(
        self,
        step: int,
        loss: Tensor | None,
        batch_size: int | None,
        due: Sequence[Instrument],
        data: StepData | None = None,
    ) -> None:
        results: dict[str, Reading] = {}
        errors: dict[str, str] = {}
        data = data or StepData()
        lrs, param_lrs = self._lrs(), self._param_lrs()
        with torch.no_grad():
            for inst in due:
                view = StepView(
                    step,
                    loss,
                    self.params,
                    lrs,
                    batch_size,
                    inst.needs,
                    data,
                    param_lrs,
                )
                try:
                    results[inst.key] = inst.compute(view)
                    partial = self._partial(inst)
                    if partial:
                        errors[inst.key] = partial
                except EngineError as exc:
                    # The model or this step does not allow the statistic: report
                    # it at this step, keep the instrument for later steps.
                    if self.fail_mode == "raise":
                        raise
                    msg = f"{type(exc).__name__}: {exc}"
                    errors[inst.key] = msg
                    results[inst.key] = None
                    if msg not in self._warned:
                        self._warned.add(msg)
                        log.warning(
                            "glasscockpit: [Step %d | %s] undefined: %s",
                            step,
                            inst.key,
                            msg,
                        )
                except Exception as exc:
                    if self.fail_mode == "raise":
                        raise
                    msg = f"{type(exc).__name__}: {exc}"
                    self.disabled[inst.key] = msg
                    errors[inst.key] = msg
                    log.warning(
                        "glasscockpit: [Step %d | %s] failed and is disabled: %s",
                        step,
                        inst.key,
                        msg,
                    )
        try:
            values = to_host(results)
        except Exception as exc:
            if self.fail_mode == "raise":
                raise
            log.warning("glasscockpit: [Step %d] could not read results: %s", step, exc)
            return
        now = time.time()
        self._send_frame(
            Readings(self.run, self._next_seq(), step, now, values, errors)
        )


def _close_at_exit(ref: weakref.ReferenceType[Cockpit]) -> None:
    cockpit = ref()
    if cockpit is not None:
        cockpit.close()


def _to_python(value: Value) -> Any:
    if isinstance(value, Array):
        import numpy as np

        return torch.from_numpy(
            np.frombuffer(value.data, value.dtype).reshape(value.shape).copy()
        )
    if isinstance(value, dict):
        return {k: _to_python(v) for k, v in value.items()}
    return value


__all__ = ["Cockpit", "Need"]
