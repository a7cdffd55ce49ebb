"""One-line attachment to the trainers people use: Lightning, Hugging Face, Accelerate.

Each adapter is a thin layer over the one ``Cockpit``: it opens ``cockpit.step``
where the framework starts a step (before the forward pass, so per-sample
instruments see it), hands over the loss when the framework has it, closes the
step before the optimizer step, sends the trainer's configuration as the run's
``config`` and forwards its logged metrics to ``cockpit.log``. The frameworks are
imported only by the adapter a user imports:

- ``glasscockpit.agent.integrations.lightning``: ``GlasscockpitCallback`` for
  ``lightning.pytorch`` (or ``pytorch_lightning``).
- ``glasscockpit.agent.integrations.transformers``: ``GlasscockpitCallback`` for
  the Hugging Face ``Trainer``.
- ``glasscockpit.agent.integrations.accelerate``: ``attach(accelerator, model,
  optimizer)`` for hand-written Accelerate loops.
"""
