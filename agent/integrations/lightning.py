"""Lightning: ``Trainer(..., callbacks=[GlasscockpitCallback()])``.

``GlasscockpitCallback`` opens ``cockpit.step`` on the first
``on_train_batch_start`` of each optimizer step (before the forward pass,
micro-batches of ``accumulate_grad_batches`` included; without accumulation on
``on_before_backward``, see below), hands it each micro-batch's loss on
``on_before_backward`` and leaves it on
``on_before_optimizer_step``, before Lightning's gradient clipping (and were a
``.grad`` edited earlier, the instruments would still read the gradient as
backpropagated). Metrics logged with ``self.log`` (``val_loss``, ``val_acc``,
``train_loss``, ``test_acc`` ...) go to ``cockpit.log`` at the end of each
epoch; the trainer's settings, the optimizer, the schedule, the batch size, the
seed and ``self.hparams`` become the run's ``config``.

Reads: the economy preset whole, and every gradient instrument of the other
presets, under ``precision="bf16-mixed"`` (tested) or ``"16-mixed"`` (its
``GradScaler``; GPU only, untested here), gradient accumulation (equal
micro-batches) and ``gradient_clip_val``. Alpha needs
per-sample losses: return ``{"loss": loss, "losses": per_sample_losses}`` from
``training_step`` (Alpha reads None with the reason otherwise).

Under Lightning's DDP strategy the callback passes ``data_parallel=True`` (global
readings, rank 0 streams the run; see the README's Data parallel); FSDP and
DeepSpeed are not supported.

Without gradient accumulation the step opens on ``on_before_backward`` with the
loss graph, so the curvature instruments work too (Hessian trace and λ_max;
TIC when ``training_step`` calls the module itself, ``self(x)``, whose output
the GGN passes start from). With accumulation it opens before the first forward
pass and they read None with the reason.

Cannot read: manual optimization (``automatic_optimization = False``: use
``Cockpit`` directly).
"""

# The frameworks call every hook with its full signature.
# ruff: noqa: ARG002

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Mapping
from functools import wraps
from typing import Any

from torch import Tensor, nn

from glasscockpit.agent.cockpit import Cockpit
from glasscockpit.agent.instruments import Instrument
from glasscockpit.agent.integrations.driver import StepDriver, forward_metrics

#: Trainer attributes worth showing as the run's configuration.
TRAINER_KEYS = (
    "max_epochs",
    "max_steps",
    "accumulate_grad_batches",
    "gradient_clip_val",
    "gradient_clip_algorithm",
    "precision",
    "num_devices",
    "world_size",
)


def _base(package: str | None = None) -> type:
    names = [package] if package else ["lightning.pytorch", "pytorch_lightning"]
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        base: type = module.Callback
        return base
    raise ImportError(
        "glasscockpit's Lightning callback needs lightning or pytorch-lightning "
        "(pip install 'glasscockpit[integrations]')"
    )


class _Hooks:
    """The callback's behaviour; ``GlasscockpitCallback`` adds Lightning's base."""

    def __init__(
        self,
        *,
        run: str | None = None,
        server: Any = ...,
        instruments: str | Iterable[str | Instrument | type[Instrument]] = "economy",
        config: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        self.options: dict[str, Any] = {"run": run, "instruments": instruments}
        if server is not ...:
            self.options["server"] = server
        self.options.update(options)
        self.extra_config = dict(config or {})
        self.cockpit: Cockpit | None = None
        self.driver: StepDriver | None = None
        self._module: Any = None
        self._losses: Tensor | None = None
        #: ``training_step``'s own loss: Lightning backpropagates it divided by
        #: ``accumulate_grad_batches`` (1), which the GGN passes cannot see past.
        self._loss: Tensor | None = None
        #: Without accumulation the step opens at the backward, with the loss
        #: graph (curvature instruments work); this is its number until then.
        self._late: int | None = None

    # -- fit -----------------------------------------------------------------------
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Build the Cockpit on the module and its (first) optimizer."""
        if self.cockpit is not None:
            return
        optimizers = list(getattr(trainer, "optimizers", []) or [])
        precision = getattr(trainer, "precision_plugin", None)
        options = dict(self.options)
        wrapped = getattr(getattr(trainer, "strategy", None), "model", None)
        if isinstance(wrapped, nn.parallel.DistributedDataParallel):
            # The callback sees the module inside the strategy's DDP wrapper.
            options.setdefault("data_parallel", True)
        self.cockpit = Cockpit(
            pl_module,
            optimizers[0] if optimizers else None,
            scaler=getattr(precision, "scaler", None),
            config={**_config(trainer, pl_module), **self.extra_config},
            **options,
        )
        self.driver = StepDriver(self.cockpit)
        self._wrap(pl_module)

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        """Open the step before its first micro-batch's forward pass.

        Without gradient accumulation the step opens on ``on_before_backward``
        instead, with the loss graph (the forward pass of a due step is
        recorded all the same: steps are consecutive).
        """
        if self.driver is None or self.driver.open:
            return
        if getattr(trainer, "accumulate_grad_batches", 1) == 1:
            self._late = int(trainer.global_step)
        else:
            self.driver.begin(int(trainer.global_step))
            # Lightning divides each micro-batch's loss by accumulate_grad_batches:
            # the parts add up to the step's loss.
            self.driver.reduce = "sum"

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Tensor) -> None:
        """Hand over the micro-batch's loss (and per-sample losses, if returned)."""
        losses, self._losses = self._losses, None
        own, self._loss = self._loss, None
        late, self._late = self._late, None
        if self.driver is None:
            return
        if late is not None:
            self.driver.begin(late, loss if own is None else own, losses)
        else:
            size = None if losses is None else int(losses.shape[0])
            self.driver.add(loss, losses, size)

    def on_before_optimizer_step(
        self, trainer: Any, pl_module: Any, optimizer: Any
    ) -> None:
        """Leave the step before clipping and the update: instruments run."""
        if self.driver is not None:
            self.driver.end()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """Forward the epoch's logged losses and accuracies."""
        self._metrics(trainer)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """Forward the validation metrics (not those of the sanity check)."""
        if not getattr(trainer, "sanity_checking", False):
            self._metrics(trainer)

    def on_test_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """Forward the test metrics."""
        self._metrics(trainer)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """Close the step left open, if any (the Cockpit closes at teardown)."""
        if self.driver is not None:
            self.driver.end()

    def on_exception(
        self, trainer: Any, pl_module: Any, exception: BaseException
    ) -> None:
        """Leave the open step with the error and close the run as failed."""
        if self.driver is not None:
            self.driver.end(exception)
        if self.cockpit is not None:
            self.cockpit.close(status="failed")

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Restore ``training_step``; close the Cockpit after fitting."""
        if stage != "fit":
            return
        self._unwrap()
        if self.driver is not None:
            self.driver.end()
        if self.cockpit is not None:
            self.cockpit.close()

    # -- helpers -------------------------------------------------------------------
    def _metrics(self, trainer: Any) -> None:
        if self.cockpit is not None:
            metrics = dict(getattr(trainer, "callback_metrics", {}) or {})
            forward_metrics(self.cockpit, int(trainer.global_step), metrics)

    def _wrap(self, pl_module: Any) -> None:
        """Read ``"losses"`` from ``training_step``'s dict, before the backward."""
        original = pl_module.training_step

        @wraps(original)
        def training_step(*args: Any, **kwargs: Any) -> Any:
            engine = None if self.cockpit is None else self.cockpit.engine
            before = None if engine is None else engine.forwards
            out = original(*args, **kwargs)
            if engine is not None and engine.recording and engine.forwards == before:
                # training_step ran its layers without the module's forward,
                # whose end tells the engine a micro-batch's samples are new.
                engine.forwards += 1
            if isinstance(out, Mapping) and isinstance(out.get("losses"), Tensor):
                self._losses = out["losses"].detach()
            loss = out.get("loss") if isinstance(out, Mapping) else out
            self._loss = loss if isinstance(loss, Tensor) else None
            return out

        pl_module.training_step = training_step
        self._module = pl_module

    def _unwrap(self) -> None:
        module, self._module = self._module, None
        if module is not None and "training_step" in vars(module):
            del module.training_step


def _config(trainer: Any, pl_module: Any) -> dict[str, Any]:
    """The trainer's settings, optimizer, schedule, batch size, seed, hparams."""
    config: dict[str, Any] = {"framework": type(trainer).__module__.split(".")[0]}
    for key in TRAINER_KEYS:
        value = getattr(trainer, key, None)
        if value is not None:
            config[key] = value if isinstance(value, int | float | str) else str(value)
    optimizers = list(getattr(trainer, "optimizers", []) or [])
    if optimizers:
        opt = optimizers[0]
        config["optimizer"] = type(opt).__name__
        config["optimizer_defaults"] = {
            k: v
            for k, v in getattr(opt, "defaults", {}).items()
            if isinstance(v, int | float | str | bool)
        }
    schedulers = list(getattr(trainer, "lr_scheduler_configs", []) or [])
    if schedulers:
        config["lr_scheduler"] = type(schedulers[0].scheduler).__name__
        config["lr_scheduler_interval"] = str(schedulers[0].interval)
    loader = getattr(trainer, "train_dataloader", None)
    batch_size = getattr(loader, "batch_size", None)
    if isinstance(batch_size, int):
        config["batch_size"] = batch_size
    seed = os.environ.get("PL_GLOBAL_SEED")
    if seed is not None:
        config["seed"] = int(seed) if seed.lstrip("-").isdigit() else seed
    hparams = getattr(pl_module, "hparams", None)
    if hparams:
        config["hparams"] = dict(hparams)
    return config


def callback_class(package: str | None = None) -> type:
    """``GlasscockpitCallback`` on ``package``'s ``Callback``.

    Args:
        package: "lightning.pytorch" or "pytorch_lightning"; default the first
            one installed (their trainers accept only their own callbacks).
    """
    return type(
        "GlasscockpitCallback",
        (_Hooks, _base(package)),
        {"__doc__": __doc__, "__module__": __name__},
    )


def __getattr__(name: str) -> Any:
    if name == "GlasscockpitCallback":
        cls = callback_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
