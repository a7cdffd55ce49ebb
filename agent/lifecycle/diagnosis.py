"""The agent's side of the diagnosis: the same rules as the server, in-process.

Every frame the Cockpit sends is also shown to a ``Diagnoser``
(``glasscockpit.diagnosis``): the hello declares the run, and each readings frame
is queued for a worker thread, which turns it into host values (waiting for the
device there, never on the training thread) and evaluates the rules. New
diagnoses go to the user's ``on_diagnosis`` callback on the training thread,
with the next frame the Cockpit sends (so one tracked step after the evidence,
at most a few): raising from it stops training, as from any other code of the
loop.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

from glasscockpit.agent.transport.host_copy import DeferredReadings
from glasscockpit.diagnosis import Diagnoser, Diagnosis, DiagnosisSettings, Rule
from glasscockpit.protocol import Bye, Hello, Readings

log = logging.getLogger("glasscockpit.agent")
#: Environment variables with the same meaning as on the server.
ENV_DISABLE = "GLASSCOCKPIT_DIAGNOSIS_DISABLE"
ENV_THRESHOLDS = "GLASSCOCKPIT_DIAGNOSIS_THRESHOLDS"
_STOP = object()


def settings_from(spec: DiagnosisSettings | None) -> DiagnosisSettings:
    """``spec``, or the settings in ``GLASSCOCKPIT_DIAGNOSIS_*``."""
    if spec is not None:
        return spec
    return DiagnosisSettings.parse(
        os.environ.get(ENV_DISABLE, ""), os.environ.get(ENV_THRESHOLDS, "")
    )


class AgentDiagnosis:
    """Feeds the frames a Cockpit sends to its diagnoser, in order, off-thread."""

    def __init__(
        self,
        on_diagnosis: Callable[[Diagnosis], Any] | None,
        settings: DiagnosisSettings | None,
        rules: Sequence[Rule] | None,
    ) -> None:
        self.diagnoser = Diagnoser(rules, settings_from(settings))
        self.on_diagnosis = on_diagnosis
        self._queue: queue.Queue[Any] = queue.Queue()
        self._new: list[Diagnosis] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def observe(self, frame: Hello | Readings | Bye | DeferredReadings) -> None:
        """Queue a frame the Cockpit sends (cheap; nothing waits)."""
        if isinstance(frame, Hello):
            self.diagnoser.declare([i.name for i in frame.instruments], frame.meta)
        elif isinstance(frame, Readings | DeferredReadings):
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name="glasscockpit-diagnosis", daemon=True
                )
                self._thread.start()
            self._queue.put(frame)

    def _work(self) -> None:
        while True:
            frame = self._queue.get()
            try:
                if frame is _STOP:
                    return
                if isinstance(frame, DeferredReadings):
                    frame = frame.resolve()
                new = self.diagnoser.feed(frame.step, frame.values)
                if new:
                    with self._lock:
                        self._new += new
            except Exception:  # noqa: BLE001 - a diagnosis bug never breaks training
                log.exception("glasscockpit: diagnosis failed")
            finally:
                self._queue.task_done()

    def poll(self, wait: bool = False) -> None:
        """With ``wait`` (at ``close()``): let the worker finish the queued frames."""
        if wait and self._thread is not None:
            self._queue.join()

    def close(self) -> None:
        """Stop the worker once it has evaluated every queued frame."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None

    def deliver(self) -> None:
        """Call ``on_diagnosis`` with the diagnoses made since the last call.

        Runs on the training thread. Exceptions from the callback propagate:
        that is how it stops training.
        """
        if not self._new:
            return
        with self._lock:
            new, self._new = self._new, []
        if self.on_diagnosis is not None:
            for d in new:
                self.on_diagnosis(d)
