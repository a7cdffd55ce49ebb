"""Engines that compute per-sample statistics and curvature for the instruments.

``HookEngine`` records layer inputs and output gradients of covered modules
(``rules.RULES``: closed forms for ``nn.Linear``, unfolding for ``nn.Conv1d`` and
``nn.Conv2d``); ``StepStats`` reduces them after the backward pass; ``diag_ggn``
runs the curvature passes. Another engine (e.g. ``torch.func`` for modules
without a rule) plugs in per layer as a ``LayerRule`` subclass in ``RULES``.
``norm_rules`` adds LayerNorm, GroupNorm, eval-mode BatchNorm and Embedding,
``attention_rule`` ``nn.MultiheadAttention``; every other module (custom raw
parameters, tied or functionally used weights) is served by the ``torch.func``
fallback of ``func_rule``, per module or for the whole model. The engine of each
parameter is in ``HookEngine.coverage`` (docs/any-model.md).

BackPACK is not used here: measured on the issue's MLP and CNN, these hooks are
faster than its first-order extensions for every statistic the instruments need,
and the GGN passes need neither ``extend`` nor an extended loss module.
"""

from __future__ import annotations

from glasscockpit.agent.curvature.ggn_diagonal import diag_ggn
from glasscockpit.agent.engine.hooks import EngineError, HookEngine, mixes_samples
from glasscockpit.agent.engine.rules import RULES, LayerRule, supports
from glasscockpit.agent.engine.stats import StepStats

__all__ = [
    "EngineError",
    "HookEngine",
    "LayerRule",
    "RULES",
    "StepStats",
    "diag_ggn",
    "mixes_samples",
    "supports",
]
