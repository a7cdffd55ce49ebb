"""Cockpit: the user-facing object attached to a training loop.

The parts it is built from live next to it: run metadata (``meta``), the epoch
metrics of ``Cockpit.log`` (``epoch_log``), the engine wiring (``engine_wiring``)
and running instruments at their phase of a step (``phases``).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from glasscockpit.agent.curvature.double_backward_kernels import MathAttention
from glasscockpit.agent.curvature.hessian_products import (
    backpack_diag_hessian,
    keep_backpack_io,
)
from glasscockpit.agent.engine import HookEngine, mixes_samples
from glasscockpit.agent.environment.backprop_grads import BackpropGrads
from glasscockpit.agent.environment.distributed import AllReducedGrads, Group
from glasscockpit.agent.environment.grad_scale import GradScale
from glasscockpit.agent.environment.heap import keep_heap
from glasscockpit.agent.environment.local_grads import LocalGrads, world_size
from glasscockpit.agent.instruments import Instrument, resolve
from glasscockpit.agent.instruments.base import Phase
from glasscockpit.agent.lifecycle.budget import OverheadBudget
from glasscockpit.agent.lifecycle.config import AgentConfig, ingest_url
from glasscockpit.agent.lifecycle.data_parallel import (
    DataParallel,
    SilentTransport,
    per_rank_run,
    refuse_sharded,
)
from glasscockpit.agent.lifecycle.diagnosis import AgentDiagnosis
from glasscockpit.agent.lifecycle.epoch_log import LOG_KEYS, LOG_SPECS, epoch_values
from glasscockpit.agent.lifecycle.meta import default_run_id, model_meta, plain
from glasscockpit.agent.lifecycle.needs import RECORDED, TWICE, Need
from glasscockpit.agent.lifecycle.phases import (
    StepContext,
    StepPhases,
    on_optimizer_step,
)
from glasscockpit.agent.lifecycle.schedules import auto, describe
from glasscockpit.agent.transport.websocket import (
    MemoryTransport,
    Transport,
    TransportOptions,
    TransportStats,
    WebSocketTransport,
)
from glasscockpit.diagnosis import Diagnosis, DiagnosisSettings, Rule
from glasscockpit.protocol import (
    Array,
    Bye,
    Hello,
    InstrumentSpec,
    Readings,
    Value,
    check_run_id,
)

log = logging.getLogger("glasscockpit.agent")
FAIL_MODES = ("disable", "raise")
_UNSET: Any = object()


class Cockpit(StepPhases):
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
            A wrapper with an ``.optimizer`` (Accelerate's ``AcceleratedOptimizer``,
            Lightning's ``LightningOptimizer``) is read through to the torch one.
        run: run id (letters, digits, ``.``, ``_``, ``-``); default: script name
            and start time.
        server: ``ws://host:port`` of a glasscockpit server, or None to keep readings
            in memory (``cockpit.readings``). Default: ``GLASSCOCKPIT_SERVER`` or
            ``ws://127.0.0.1:8050``.
        instruments: a preset ("economy", "business", "full"), instrument names,
            classes or instances.
        token: bearer token if the server requires one (default ``GLASSCOCKPIT_TOKEN``).
        meta: extra run metadata (notes, tags) shown on the dashboard.
        config: the run's hyperparameters (optimizer, learning-rate schedule,
            batch size, seed, ...), a plain dict sent as the run metadata's
            ``config``; the integrations fill it from the trainer.
        fail_mode: "disable" (default) turns off an instrument that raises, after one
            warning; "raise" re-raises (for tests).
        record: also write every frame to this file, a recording that
            ``glasscockpit sync FILE --server URL`` uploads later (works with
            ``server=None`` too). Without it, frames go to a spill file under
            ``GLASSCOCKPIT_SPILL_DIR`` only while the server cannot take them.
        close_timeout: seconds ``close()`` (and interpreter exit) keeps delivering
            before leaving the rest in the spill file; default
            ``GLASSCOCKPIT_CLOSE_TIMEOUT`` or 5.
        transport: where frames go (overrides ``server``; for tests).
        transport_options: budgets and timings of the websocket transport.
        budget: overhead budget, a fraction of the plain step time (default
            ``GLASSCOCKPIT_BUDGET`` or 0.05): instruments on their default
            schedule are tracked as often as it allows once their cost is measured
            (``agent/lifecycle/budget.py``); None keeps the fixed cadences by cost.
            Explicit schedules are never changed.
        per_rank: under DistributedDataParallel with several processes, every
            process streams the readings of its own samples as run
            ``<run>.rank<r>``. Default False: every reading describes the global
            batch (sums over all processes' samples, one all-reduce per tracked
            step) and rank 0 alone streams the run.
        data_parallel: whether the model is a data-parallel replica whose
            ``.grad`` the framework all-reduces (DDP). Default: when the model
            is wrapped in ``DistributedDataParallel`` and the default process
            group has several processes; pass True for the module inside a
            wrapper the Cockpit does not see (a trainer's DDP strategy).
        scaler: the ``torch.amp.GradScaler`` of mixed-precision training, if any:
            gradients are read divided by its scale (whether or not
            ``scaler.unscale_`` ran inside the step). Pass the unscaled loss to
            ``step``.
        on_diagnosis: called in the training thread with each new diagnosis
            (``glasscockpit.diagnosis.Diagnosis``: rule, severity, steps,
            evidence, remedies); raise from it to stop training.
        diagnosis: rules turned off and thresholds changed (default
            ``GLASSCOCKPIT_DIAGNOSIS_DISABLE`` / ``_THRESHOLDS``, as the server).
        rules: the diagnosis rules (default: every built-in rule); add your own.
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
        record: str | os.PathLike[str] | None = None,
        close_timeout: float | None = None,
        transport: Transport | None = None,
        transport_options: TransportOptions | None = None,
        budget: float | None = _UNSET,
        scaler: Any | None = None,
        per_rank: bool = False,
        data_parallel: bool | None = None,
        config: dict[str, Any] | None = None,
        on_diagnosis: Callable[[Diagnosis], Any] | None = None,
        diagnosis: DiagnosisSettings | None = None,
        rules: Sequence[Rule] | None = None,
    ) -> None:
        env = AgentConfig.from_env()
        if fail_mode not in FAIL_MODES:
            raise ValueError(
                f"fail_mode must be one of {FAIL_MODES}, got {fail_mode!r}"
            )
        # torch.compile's wrapper: its parameters are the original module's under
        # an "_orig_mod." prefix. Track the original (the compiled forward runs
        # its modules, so their hooks fire) and report the user's names.
        # DistributedDataParallel / DataParallel likewise wrap the model as
        # ``.module`` (names "module.…"); re-runs of the wrapper would also
        # run its gradient synchronisation. Unwrapped in any nesting order.
        ddp = False
        while True:
            if type(model).__name__ == "OptimizedModule":
                model = cast(nn.Module, model._orig_mod)
            elif isinstance(
                model, nn.parallel.DistributedDataParallel | nn.DataParallel
            ):
                ddp = ddp or isinstance(model, nn.parallel.DistributedDataParallel)
                model = model.module
            else:
                break
        self.model = model
        optimizer = unwrap_optimizer(optimizer)
        self.optimizer = optimizer
        self.scaler = scaler
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
        for inst in self.instruments:
            inst.on_model(model)
        if any(i.needs & RECORDED for i in self.instruments):
            self.engine = HookEngine(model, self.params)
            # The first step number is unknown: record the first forward pass.
            self.engine.arm()
        #: glibc's heap thresholds, fixed for CPU training (``heap`` says why).
        self.heap = (
            keep_heap()
            if self.engine is not None
            and any(p.device.type == "cpu" for _, p in self.params)
            else "unchanged (no per-sample engine on the CPU)"
        )
        #: Under DDP with several processes ``.grad`` is all-reduced; the
        #: per-sample statistics use this process's gradients instead.
        self._local: LocalGrads | None = None
        if data_parallel is not None:
            ddp = data_parallel
        if ddp and self.engine is not None and world_size() > 1:
            self._local = LocalGrads([p for _, p in self.params])
        refuse_sharded(self.params)
        self._dp: DataParallel | None = None
        if ddp and world_size() > 1:
            if per_rank:
                self.run = check_run_id(per_rank_run(self.run))
            else:
                self._dp = DataParallel(Group())
        elif world_size() > 1 and data_parallel is None:
            log.warning(
                "glasscockpit: %d processes, but the model is not wrapped in "
                "DistributedDataParallel: each process reads its own batch; pass "
                "data_parallel=True if a trainer all-reduces its gradients",
                world_size(),
            )
        #: ``.grad`` at the end of the backward pass, for loops that edit it
        #: inside the step (clipping); ``_local`` keeps it under DDP.
        self._backprop = (BackpropGrads if self._dp is None else AllReducedGrads)(
            [p for _, p in self.params]
        )
        #: The open tracked step (``set_loss`` hands it the loss).
        self._open: StepContext | None = None
        complete = self.engine is not None and not self.engine.uncovered
        for inst in self.instruments:
            inst.on_engine(complete)
        #: Fused attention kernels cannot be differentiated twice: forward passes
        #: of steps with curvature (or Alpha) run under the math kernel.
        self.kernels: MathAttention | None = None
        if any(i.needs & TWICE for i in self.instruments):
            self.kernels = MathAttention(model)
            self.kernels.wanted = True  # the first forward pass, as above
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
                    **model_meta(model, optimizer),
                    # Which engine serves which parameter's per-sample statistics.
                    **(
                        {"coverage": dict(self.engine.coverage)}
                        if self.engine is not None
                        else {}
                    ),
                    "heap": self.heap,
                    **({"data_parallel": self._dp.meta()} if self._dp else {}),
                    "gradients": GRADIENTS,
                    **(meta or {}),
                    **({"config": config} if config is not None else {}),
                }
            ),
        )
        self._seq = 0
        self._close_timeout = (
            env.close_timeout if close_timeout is None else close_timeout
        )
        server = env.server if server is _UNSET else server
        if self._dp is not None and self._dp.silent:
            transport = SilentTransport()  # rank 0 streams the job's run
        self.transport: Transport
        if transport is not None:
            self.transport = transport
        elif server is None:
            self.transport = MemoryTransport(self.hello, record=record)
        else:
            options = transport_options or TransportOptions(
                spill_max_bytes=env.spill_max_bytes
            )
            self.transport = WebSocketTransport(
                ingest_url(server),
                self.hello,
                token=token or env.token,
                record=record,
                spill_dir=env.spill_dir,
                options=options,
            )
        if isinstance(self.transport, MemoryTransport):
            self.transport.send(self.hello)
        #: The diagnosis rules over this run's readings (docs/diagnosis.md).
        self._diagnosis: AgentDiagnosis | None = AgentDiagnosis(
            on_diagnosis, diagnosis, rules
        )
        self._diagnosis.observe(self.hello)
        self._closing = False
        self._closed = False
        self._planned: tuple[int, list[Instrument]] | None = None
        fraction = env.budget if budget is _UNSET else budget
        auto_schedules = {
            i.key: i.schedule for i in self.instruments if isinstance(i.schedule, auto)
        }
        # Data parallelism: every process must track the same steps (their
        # collectives pair up), and each would thin its schedules by its own
        # timings; the fixed cadences by cost are the same everywhere.
        self._budget: OverheadBudget | None = (
            OverheadBudget(fraction, auto_schedules)
            if fraction and auto_schedules and self._dp is None
            else None
        )
        self._last_time: float | None = None
        self._after_step: tuple[StepContext, list[Instrument]] | None = None
        self._init: list[Tensor] | None = None
        if any(Need.INIT_PARAMS in i.needs for i in self.instruments):
            # "Initialisation" = the parameters when monitoring starts (any step).
            self._init = [p.detach().clone() for _, p in self.params]
        self._step_hook: Any = None
        if optimizer is not None:
            # AFTER_STEP instruments run right after optimizer.step().
            self._step_hook = optimizer.register_step_post_hook(
                on_optimizer_step(weakref.ref(self))
            )
        atexit.register(_close_at_exit, weakref.ref(self))

    # -- the training-loop API ------------------------------------------------
    def _diag_hessian_for_later(
        self, ctx: StepContext, due: Sequence[Instrument]
    ) -> None:
        """BackPACK's Hessian diagonal for instruments that read it after backward.

        Only before the user's backward is the loss graph there to differentiate
        (TIC with ``curvature="hessian"``); shared through the step's cache with
        ``HessTrace``, which computes it itself in its own phase.
        """
        if ctx.loss is None or "diag_hessian" in ctx.cache or self._dp is not None:
            return
        if any(
            Need.DIAG_HESSIAN in i.needs and i.phase is not Phase.BEFORE_BACKWARD
            for i in due
        ):
            params = [p for _, p in self.params]
            ctx.cache["diag_hessian"] = backpack_diag_hessian(ctx.loss, params)

    @contextlib.contextmanager
    def step(
        self,
        step: int,
        loss: Tensor | None = None,
        batch_size: int | None = None,
        losses: Tensor | None = None,
    ) -> Iterator[bool]:
        """Wrap ``loss.backward()``; yields whether this step is tracked.

        Instruments run at their declared ``phase``: on entry (the loss graph is
        intact, for curvature), on exit (after the backward pass, before
        ``optimizer.step()``), or after the optimizer step. Untracked steps cost
        one schedule check per instrument, plus the second half of any two-step
        instrument that is pending from the previous step.

        Per-sample instruments need the step's forward pass recorded: the engine is
        armed at the end of step ``t`` when step ``t + 1`` is due, so number steps
        consecutively, or open this context before the forward pass (then pass no
        ``loss`` here, hand it over with ``set_loss``; curvature instruments need
        it, and the forward, before entry).

        The instruments read the gradient as backpropagated: clipping or other
        changes of ``.grad`` inside the context, after the backward pass, are not
        seen (``agent/environment/backprop_grads.py``).

        Args:
            step: the global step counter.
            loss: the loss about to be backpropagated (mean over the batch).
            batch_size: samples in this step's batch.
            losses: per-sample losses, shape [B], for instruments such as Alpha.
        """
        self._run_after_step()
        budget = self._budget
        start = time.perf_counter()
        if budget is not None:
            budget.begin(start)
        due, pending = self._plan(step)
        if self._closed or (not due and not pending):
            if budget is not None:
                budget.charge(time.perf_counter() - start)
            try:
                yield False
            finally:
                start = time.perf_counter()
                if budget is not None:
                    budget.update(step + 1)
                self._prepare(step + 1)
                if budget is not None:
                    budget.charge(time.perf_counter() - start)
            return
        try:
            ctx = StepContext(step, loss, losses, batch_size, self._lrs())
            ctx.param_lrs = self._param_lrs()
            if any(Need.LOSSES in i.needs for i in (*due, *pending)):
                ctx.mixes = mixes_samples(self.model)
            if self._dp is not None:
                self._dp.begin(ctx, self.engine)
            ctx.data = self._step_data([*due, *pending], loss)
            if self._dp is not None:
                self._dp.attach(ctx.data)
            if any(Need.UPDATE in i.needs and i.phase is Phase.AFTER_STEP for i in due):
                # Copies in one fused call (x·1 is x exactly), not one per tensor.
                ctx.before = list(
                    torch._foreach_mul([p.detach() for _, p in self.params], 1.0)
                )
            errors: dict[str, str] = {}
            with torch.enable_grad(), keep_backpack_io():
                results = self._run_phase(
                    Phase.BEFORE_BACKWARD, ctx, due, pending, errors
                )
                self._diag_hessian_for_later(ctx, due)
            if self.engine is not None:
                # Our entry passes went through the recorded outputs' hooks; the
                # user's backward must be the one they keep.
                self.engine.clear_grads()
            self._send_drained()
            if budget is not None:
                budget.track(
                    [i.key for i in (*due, *pending)],
                    [i.key for i in due if i.needs & RECORDED],
                    self.engine is not None and self.engine.recording,
                )
                body = time.perf_counter()
                budget.charge(body - start)
            # Per-rank DDP reads ``_local``; global readings the all-reduced
            # ``.grad`` as backpropagated (``AllReducedGrads``).
            capture = (self._local is None or self._dp is not None) and any(
                i.needs & READS_GRAD for i in (*due, *pending)
            )
            if self._local is not None:
                self._local.start()  # the body's backward passes
            if capture:
                self._backprop.start()
            self._open = ctx
            try:
                yield bool(due)
            finally:
                self._open = None
                if self._local is not None:
                    self._local.stop()
                self._backprop.stop()
            start = time.perf_counter()
            missed = self._backprop.restore() if capture else None
            try:
                with torch.no_grad():
                    results.update(
                        self._run_phase(Phase.AFTER_BACKWARD, ctx, due, pending, errors)
                    )
            finally:
                self._backprop.put_back()
            if missed:
                for inst in due:
                    if inst.needs & READS_GRAD and inst.key in results:
                        errors.setdefault(inst.key, missed)
            ctx.cache.clear()  # drop the loss graph kept for curvature
            if results or errors:
                self._emit(step, results, errors)
            self._send_drained()
            after = [i for i in due if i.phase is Phase.AFTER_STEP]
            if after:
                self._after_step = (ctx, after)
        finally:
            if budget is not None:
                # Between steps: no schedule is being consulted.
                budget.update(step + 1)
            self._prepare(step + 1)
            if budget is not None:
                budget.charge(time.perf_counter() - start)

    def set_loss(
        self,
        loss: Tensor | None = None,
        losses: Tensor | None = None,
        batch_size: int | None = None,
    ) -> None:
        """Hand the open step its loss when the step was opened before the forward.

        For loops (and the integrations) that enter ``cockpit.step(step)`` before
        the loss exists: instruments that read it after the backward pass
        (``loss``, Alpha's per-sample losses) then read these. Instruments that
        differentiate the loss before the backward pass (curvature, TIC) need it
        on entry. Outside a tracked step this does nothing.

        Args:
            loss: the step's loss (the mean over the whole batch).
            losses: per-sample losses, shape [B].
            batch_size: samples in the step's batch.
        """
        ctx = self._open
        if ctx is None:
            return
        if loss is not None:
            ctx.loss = loss
        if losses is not None:
            ctx.losses = losses
        if batch_size is not None:
            ctx.batch_size = batch_size

    def _grad_scale(self) -> GradScale | None:
        """As ``EngineWiring``'s; restored ``.grad`` predates ``unscale_``."""
        scale = super()._grad_scale()
        if scale is not None and self._backprop.swapped:
            return GradScale(grads=scale.outputs, outputs=scale.outputs)
        return scale

    def log(self, step: int, **metrics: float) -> None:
        """Record epoch-level metrics at ``step`` (Cockpit's performance gauge).

        Keywords: ``train_loss``, ``valid_loss``, ``test_loss``, ``train_accuracy``,
        ``valid_accuracy``, ``test_accuracy``; sent as instruments ``epoch_loss``
        and ``epoch_accuracy`` with one series per split.
        """
        values = epoch_values(metrics)
        if values and not self._closed:
            self._send_frame(
                Readings(self.run, self._next_seq(), step, time.time(), values, {})
            )

    def close(self, status: str = "finished") -> None:
        """Finish pending readings, send the final frame, flush (bounded time).

        Frames still undelivered then stay in the spill file; one log line says
        where and how to upload them. Never raises.

        Args:
            status: "finished", or "failed" (used at interpreter exit after an
                uncaught exception).
        """
        if self._closed:
            return
        self._closing = True
        self._run_after_step()
        for inst in self.instruments:
            if inst.key not in self.disabled:
                self._guard(-1, inst, inst.finish, {})
        self._send_drained()
        self._closed = True
        if self._step_hook is not None:
            self._step_hook.remove()
        if self.engine is not None:
            self.engine.remove()
        if self.kernels is not None:
            self.kernels.remove()
        status = status if status in ("finished", "failed") else "finished"
        self._send_frame(Bye(run=self.run, seq=self._next_seq(), status=status))
        self._last_diagnoses()
        try:
            self.transport.close(self._close_timeout)
        except Exception:  # noqa: BLE001 - monitoring never breaks training
            log.exception("glasscockpit: closing the transport failed")

    def __enter__(self) -> Cockpit:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        # An exception leaving the block ended the training: the run failed.
        self.close("failed" if exc_type is not None else "finished")

    def _last_diagnoses(self) -> None:
        """Feed the last frames and call back with what they showed (never raises)."""
        if self._diagnosis is None:
            return
        try:
            self._diagnosis.close()  # evaluates every queued frame first
            self._diagnosis.deliver()
        except Exception:  # noqa: BLE001 - close() never raises
            log.exception("glasscockpit: the last diagnoses failed")

    @property
    def diagnoses(self) -> list[Diagnosis]:
        """What the diagnosis rules found so far, in the order they were made.

        The same rules as the server's (``GET /v1/runs/{run}/diagnoses``).
        """
        if self._diagnosis is None:
            return []
        return list(self._diagnosis.diagnoser.diagnoses)

    @property
    def stats(self) -> TransportStats:
        """Delivery counters and connection state (see ``TransportStats``).

        sent, acked, resent, spilled, recorded, dropped, reconnects, pending, and
        ``state``: live, connecting, offline, reconnecting, rejected, closed.
        """
        return self.transport.stats

    @property
    def readings(self) -> dict[int, dict[str, Any]]:
        """In-memory mode: {step: {instrument key: value}}; arrays as CPU tensors.

        A step may arrive in several frames (after-step and two-step readings);
        they are merged here.
        """
        if not isinstance(self.transport, MemoryTransport):
            raise RuntimeError("readings are kept only when Cockpit(server=None)")
        out: dict[int, dict[str, Any]] = {}
        for frame in self.transport.frames:
            if isinstance(frame, Readings):
                out.setdefault(frame.step, {}).update(
                    {k: _to_python(v) for k, v in frame.values.items()}
                )
        return dict(sorted(out.items()))


#: What the instruments read as the gradient (the run metadata's ``gradients``).
GRADIENTS = (
    "as backpropagated: .grad at the end of the backward pass inside cockpit.step; "
    "clipping or other .grad edits after it are not seen"
)
#: Needs that read ``.grad`` (directly, or against per-sample gradients).
READS_GRAD = frozenset({Need.GRAD}) | RECORDED


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer | None:
    """The torch optimizer inside wrappers that keep it as ``.optimizer``.

    Accelerate's ``AcceleratedOptimizer`` (and any object that is no initialised
    torch optimizer but keeps one as ``.optimizer``) wraps the optimizer the
    training step updates; its hooks and its state are the ones to read.
    Lightning's ``LightningOptimizer`` is an initialised copy sharing the
    optimizer's groups, state and hooks: kept as it is, it reads the same.
    An initialised optimizer with an ``.optimizer`` of its own (Lookahead) is
    kept too: its own step is the update.
    """
    seen: set[int] = set()
    while optimizer is not None and id(optimizer) not in seen:
        seen.add(id(optimizer))
        # An initialised torch optimizer is the one (a wrapper subclassing
        # Optimizer, like AcceleratedOptimizer, never ran its __init__).
        if isinstance(optimizer, torch.optim.Optimizer) and hasattr(
            optimizer, "_optimizer_step_post_hooks"
        ):
            break
        inner = getattr(optimizer, "optimizer", None)
        if inner is None:
            break
        optimizer = inner
    return cast(torch.optim.Optimizer | None, optimizer)


def _close_at_exit(ref: weakref.ReferenceType[Cockpit]) -> None:
    cockpit = ref()
    if cockpit is not None:
        # The interpreter sets sys.last_value when the script died of an exception.
        crashed = getattr(sys, "last_value", None) is not None
        cockpit.close(status="failed" if crashed else "finished")


def _to_python(value: Value) -> Any:
    if isinstance(value, Array):
        import numpy as np

        return torch.from_numpy(
            np.frombuffer(value.data, value.dtype).reshape(value.shape).copy()
        )
    if isinstance(value, dict):
        return {k: _to_python(v) for k, v in value.items()}
    return value


__all__ = [
    "LOG_KEYS",
    "LOG_SPECS",
    "Cockpit",
    "Need",
    "default_run_id",
    "plain",
    "unwrap_optimizer",
]
