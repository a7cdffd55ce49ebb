"""The agent's side of the diagnosis: the same rules as the server, in-process.

Every frame the Cockpit sends is also shown to a ``Diagnoser``
(``glasscockpit.diagnosis``): the hello declares the run, and each readings frame
is fed once its values are on the host. Readings are copied from the device
asynchronously, so a frame is fed as soon as its copy is complete (on the CPU at
once; on CUDA by the next ``cockpit.step`` at the latest), without making the
training thread wait for the device. New diagnoses go to the user's
``on_diagnosis`` callback in the training thread: raising from it stops
training, as from any other code of the loop.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from glasscockpit.agent.transport.host_copy import DeferredReadings
from glasscockpit.diagnosis import Diagnoser, Diagnosis, DiagnosisSettings, Rule
from glasscockpit.protocol import Bye, Hello, Readings

#: Environment variables with the same meaning as on the server.
ENV_DISABLE = "GLASSCOCKPIT_DIAGNOSIS_DISABLE"
ENV_THRESHOLDS = "GLASSCOCKPIT_DIAGNOSIS_THRESHOLDS"


def settings_from(spec: DiagnosisSettings | None) -> DiagnosisSettings:
    """``spec``, or the settings in ``GLASSCOCKPIT_DIAGNOSIS_*``."""
    if spec is not None:
        return spec
    return DiagnosisSettings.parse(
        os.environ.get(ENV_DISABLE, ""), os.environ.get(ENV_THRESHOLDS, "")
    )


class AgentDiagnosis:
    """Feeds the frames a Cockpit sends to its diagnoser, in order."""

    def __init__(
        self,
        on_diagnosis: Callable[[Diagnosis], Any] | None,
        settings: DiagnosisSettings | None,
        rules: Sequence[Rule] | None,
    ) -> None:
        self.diagnoser = Diagnoser(rules, settings_from(settings))
        self.on_diagnosis = on_diagnosis
        self._pending: deque[DeferredReadings | Readings] = deque()
        self._new: list[Diagnosis] = []

    def observe(self, frame: Hello | Readings | Bye | DeferredReadings) -> None:
        """Queue a frame the Cockpit sends (cheap; nothing waits)."""
        if isinstance(frame, Hello):
            self.diagnoser.declare([i.name for i in frame.instruments], frame.meta)
        elif isinstance(frame, Readings | DeferredReadings):
            self._pending.append(frame)

    def poll(self, wait: bool = False) -> None:
        """Feed every queued frame whose values are on the host, in order.

        With ``wait`` (at ``close()``) waits for the device copies instead.
        """
        while self._pending:
            frame = self._pending[0]
            if isinstance(frame, DeferredReadings):
                if not (wait or frame.copy.ready()):
                    break
                frame = frame.resolve()
            self._pending.popleft()
            self._new += self.diagnoser.feed(frame.step, frame.values)

    def deliver(self) -> None:
        """Call ``on_diagnosis`` with the diagnoses made since the last call.

        Exceptions from the callback propagate: that is how it stops training.
        """
        new, self._new = self._new, []
        if self.on_diagnosis is not None:
            for d in new:
                self.on_diagnosis(d)
