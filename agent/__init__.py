"""The in-process agent: attach ``Cockpit`` to a training loop."""

from __future__ import annotations

from glasscockpit.agent.cockpit import Cockpit
from glasscockpit.agent.instruments import ALL, PRESETS, Instrument
from glasscockpit.agent.lifecycle.schedules import always, every, log_spaced, never

__all__ = [
    "ALL",
    "PRESETS",
    "Cockpit",
    "Instrument",
    "always",
    "every",
    "log_spaced",
    "never",
]
