"""The Hugging Face ``Trainer``: ``Trainer(..., callbacks=[GlasscockpitCallback()])``.

``GlasscockpitCallback`` opens ``cockpit.step`` on ``on_step_begin`` (before the
forward passes of the optimizer step, micro-batches of gradient accumulation
included; without accumulation after the forward pass, see below) and leaves it
on ``on_pre_optimizer_step``, after the Trainer's gradient clipping: the
instruments read the gradient as backpropagated (the
norm the Trainer logs as ``grad_norm``), not the clipped one. A forward hook on
the model reads each micro-batch's ``outputs.loss`` and, for single-label
classification (``logits`` [B, C], integer ``labels`` [B]), the per-sample
cross-entropies whose mean is that loss.

Reads: the economy preset whole (loss, gradient norm and tests, histograms,
Alpha, distance, update size, learning rate), the ``business``/``full``
gradient instruments, GSNR, CABS; with gradient accumulation (equal
micro-batches; for models that take ``num_items_in_batch`` the Trainer sums the
micro-batches' losses, and so does the ``loss`` reading) and mixed precision
(bf16 autocast, tested; fp16 through the optimizer's ``GradScaler``, untested on CPU).

When the Trainer runs DDP over several processes the callback passes
``data_parallel=True`` (global readings, rank 0 streams the run); FSDP and
DeepSpeed are not supported.

Without gradient accumulation the step opens at the end of the model's forward
pass, with ``outputs.loss`` and its graph: the curvature instruments work too
(Hessian trace, λ_max; TIC where the GGN passes see through the model's loss,
which a loss divided by ``num_items_in_batch`` is not yet). With accumulation the
step opens before the first forward pass and they read None with the reason.

Alpha reads None on steps whose clipping binds under AdamW (the update leaves
the directions it is fitted in; ``agent/instruments/alpha.py``).

Cannot read: per-sample losses of other heads (token-level
language modelling, regression, label smoothing, ``compute_loss_func``) unless
given as ``losses=fn(outputs, inputs)`` (Alpha reads None without them);
the loss when the model returns none (a ``compute_loss_func``) unless
``losses=`` gives the per-sample losses (their mean is used).
"""

# The frameworks call every hook with its full signature.
# ruff: noqa: ARG002

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812 - torch convention

from glasscockpit.agent.cockpit import Cockpit
from glasscockpit.agent.instruments import Instrument
from glasscockpit.agent.integrations.driver import StepDriver, forward_metrics

log = logging.getLogger("glasscockpit.agent")

#: ``(outputs, inputs) -> per-sample losses [B]`` of one micro-batch.
LossesFn = Callable[[Any, Mapping[str, Any]], Tensor | None]

#: TrainingArguments worth showing as the run's configuration.
CONFIG_KEYS = (
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "warmup_ratio",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "optim",
    "max_grad_norm",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_steps",
    "seed",
    "data_seed",
    "bf16",
    "fp16",
    "eval_strategy",
    "logging_steps",
)


def _base() -> type:
    try:
        module = importlib.import_module("transformers")
    except ImportError as exc:
        raise ImportError(
            "glasscockpit's Trainer callback needs transformers "
            "(pip install 'glasscockpit[integrations]')"
        ) from exc
    base: type = module.TrainerCallback
    return base


def classification_losses(outputs: Any, inputs: Mapping[str, Any]) -> Tensor | None:
    """Per-sample cross-entropies of single-label classification, else None.

    Used only where their mean is the model's loss (checked), so Alpha reads
    the losses the gradient is of.
    """
    logits = _field(outputs, "logits")
    labels = inputs.get("labels")
    if not isinstance(logits, Tensor) or not isinstance(labels, Tensor):
        return None
    if logits.dim() != 2 or labels.dim() != 1 or labels.is_floating_point():
        return None
    if labels.shape[0] != logits.shape[0] or bool((labels < 0).any()):
        return None
    return F.cross_entropy(logits.float(), labels, reduction="none")


def _field(outputs: Any, name: str) -> Any:
    if isinstance(outputs, Mapping):
        return outputs.get(name)
    return getattr(outputs, name, None)


class _Hooks:
    """The callback's behaviour; ``GlasscockpitCallback`` adds the Trainer's base."""

    def __init__(
        self,
        *,
        run: str | None = None,
        server: Any = ...,
        instruments: str | Iterable[str | Instrument | type[Instrument]] = "economy",
        losses: LossesFn | None = classification_losses,
        config: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        self.options: dict[str, Any] = {"run": run, "instruments": instruments}
        if server is not ...:
            self.options["server"] = server
        self.options.update(options)
        self.losses_fn = losses
        self.extra_config = dict(config or {})
        self.cockpit: Cockpit | None = None
        self.driver: StepDriver | None = None
        self._hook: Any = None
        #: The number of a step without accumulation until its forward pass ends.
        self._late: int | None = None
        self._warned = False

    # -- Trainer events ------------------------------------------------------------
    def on_train_begin(
        self, args: Any, state: Any, control: Any, **kwargs: Any
    ) -> None:
        """Build the Cockpit on the Trainer's model and optimizer."""
        model: nn.Module = kwargs["model"]
        scaler = getattr(kwargs.get("optimizer"), "scaler", None)
        options = dict(self.options)
        if _ddp(args):
            # The callback sees the model inside the Trainer's DDP wrapper.
            options.setdefault("data_parallel", True)
        self.cockpit = Cockpit(
            model,
            kwargs.get("optimizer"),
            scaler=scaler,
            config={**self._config(args, kwargs), **self.extra_config},
            **options,
        )
        self.driver = StepDriver(self.cockpit)
        self._hook = model.register_forward_hook(self._forward, with_kwargs=True)

    def on_step_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        """Open the step before its first forward pass.

        Without gradient accumulation it opens at the end of the forward pass
        instead, with the loss graph (the forward pass of a due step is recorded
        all the same: steps are consecutive).
        """
        if self.driver is None:
            return
        self.driver.end()
        if getattr(args, "gradient_accumulation_steps", 1) == 1:
            self._late = int(state.global_step)
        else:
            self.driver.begin(int(state.global_step))

    def on_pre_optimizer_step(
        self, args: Any, state: Any, control: Any, **_: Any
    ) -> None:
        """Leave the step: instruments read the gradient as backpropagated."""
        if self.driver is not None:
            self.driver.end()

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        """A step the Trainer ended without an optimizer step still closes."""
        if self.driver is not None:
            self.driver.end()

    def on_log(
        self,
        args: Any,
        state: Any,
        control: Any,
        logs: Mapping[str, Any] | None = None,
        **_: Any,
    ) -> None:
        """Forward the Trainer's logged losses and accuracies (train and eval)."""
        # The run's closing summary (``train_runtime``, the mean ``train_loss``
        # of the whole run) is no epoch metric.
        if self.cockpit is not None and logs and "train_runtime" not in logs:
            forward_metrics(self.cockpit, int(state.global_step), logs)

    def on_train_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        """Close the Cockpit (flushes what is left)."""
        if self.driver is not None:
            self.driver.end()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.cockpit is not None:
            self.cockpit.close()

    # -- the loss of each micro-batch ----------------------------------------------
    def _forward(
        self,
        module: nn.Module,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        outputs: Any,
    ) -> None:
        driver = self.driver
        if driver is None or not (driver.open or self._late is not None):
            return
        if not module.training or not torch.is_grad_enabled():
            return  # evaluation inside a step is no micro-batch
        loss = _field(outputs, "loss")
        losses = None
        if self.losses_fn is not None:
            losses = self.losses_fn(outputs, kwargs)
            if (
                isinstance(loss, Tensor)
                and losses is not None
                and not torch.allclose(losses.mean(), loss.detach().float(), 1e-4)
            ):
                # Another loss than their mean: not its samples' (Alpha would
                # relate the gradient to the wrong losses).
                if not self._warned:
                    self._warned = True
                    log.warning(
                        "glasscockpit: the per-sample losses average to %.6g, the "
                        "model's loss is %.6g: left out (Alpha reads None); pass "
                        "losses=fn(outputs, inputs) whose mean is the loss",
                        float(losses.mean()),
                        float(loss),
                    )
                losses = None
        if not isinstance(loss, Tensor):
            loss = None if losses is None else losses.mean()
        late, self._late = self._late, None
        if late is not None:
            driver.begin(late, loss, losses)
            return
        # The Trainer passes ``num_items_in_batch`` only to models that then
        # normalise over the whole step: their micro-batch losses add up.
        if "num_items_in_batch" in kwargs:
            driver.reduce = "sum"
        size = None if losses is None else int(losses.shape[0])
        driver.add(loss, losses, size)

    @staticmethod
    def _config(args: Any, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The Trainer's hyperparameters, optimizer and schedule, as plain values."""
        config: dict[str, Any] = {"framework": "transformers.Trainer"}
        for key in CONFIG_KEYS:
            if hasattr(args, key):
                value = getattr(args, key)
                config[key] = (
                    value if isinstance(value, int | float | str) else str(value)
                )
        optimizer = kwargs.get("optimizer")
        inner = getattr(optimizer, "optimizer", optimizer)
        if inner is not None:
            config["optimizer"] = type(inner).__name__
        scheduler = kwargs.get("lr_scheduler")
        if scheduler is not None:
            config["lr_scheduler"] = type(scheduler).__name__
        model = kwargs.get("model")
        model_config = getattr(model, "config", None)
        if model_config is not None and hasattr(model_config, "to_dict"):
            config["model_config"] = {
                k: v
                for k, v in model_config.to_dict().items()
                if isinstance(v, int | float | str | bool)
            }
        return config


def _ddp(args: Any) -> bool:
    """Whether the Trainer runs DistributedDataParallel over several processes."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return False
    if dist.get_world_size() < 2 or getattr(args, "deepspeed", None):
        return False
    return not getattr(args, "fsdp", None)


def __getattr__(name: str) -> Any:
    if name == "GlasscockpitCallback":
        cls = type(
            "GlasscockpitCallback",
            (_Hooks, _base()),
            {"__doc__": __doc__, "__module__": __name__},
        )
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
