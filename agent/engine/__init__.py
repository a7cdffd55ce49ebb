"""Engines that compute per-sample statistics and curvature for the instruments.

``HookEngine`` records layer inputs and output gradients of covered modules
(``rules.py``: closed forms for ``nn.Linear`` and ``nn.Conv2d``); ``StepStats``
reduces them after the backward pass; ``diag_ggn`` runs the curvature passes.
Another engine (e.g. ``torch.func`` for modules without a rule) plugs in as a
``LayerRule`` subclass returned by ``rules.supports``.
"""

from __future__ import annotations

from glasscockpit.agent.engine.curvature import diag_ggn
from glasscockpit.agent.engine.hooks import EngineError, HookEngine
from glasscockpit.agent.engine.rules import LayerRule, supports
from glasscockpit.agent.engine.stats import StepStats

__all__ = [
    "EngineError",
    "HookEngine",
    "LayerRule",
    "StepStats",
    "diag_ggn",
    "supports",
]
