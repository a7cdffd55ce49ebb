"""Diagnoser: runs the rules incrementally over a run's readings, frame by frame.

The server keeps one per stored run and feeds it every readings frame as it is
stored (live ingest, replay at start-up and uploads by ``glasscockpit sync`` all
pass through ``RunStore.ingest``); the agent keeps one per ``Cockpit`` and feeds
it the frames it sends. Same rules, same inputs, same diagnoses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from glasscockpit.diagnosis.base import Diagnosis, Finding, Rule
from glasscockpit.diagnosis.history import History
from glasscockpit.diagnosis.rules import RULES
from glasscockpit.diagnosis.settings import DiagnosisSettings

log = logging.getLogger("glasscockpit.diagnosis")
Callback = Callable[[Diagnosis], Any]


def default_rules() -> list[Rule]:
    """One instance of every built-in rule."""
    return [cls() for cls in RULES]


class Diagnoser:
    """Evaluates rules on one run's readings as frames arrive.

    Args:
        rules: the rules (default: every built-in rule); add your own instances.
        settings: rules turned off and thresholds changed.
        on_diagnosis: called with each new diagnosis (once per rule and key).
    """

    def __init__(
        self,
        rules: Sequence[Rule] | None = None,
        settings: DiagnosisSettings | None = None,
        on_diagnosis: Callback | None = None,
    ) -> None:
        all_rules = list(rules) if rules is not None else default_rules()
        self.settings = settings or DiagnosisSettings()
        self.settings.check(all_rules)
        self.rules = [r for r in all_rules if self.settings.is_on(r)]
        self._th = {r.name: self.settings.for_rule(r) for r in self.rules}
        self.history = History(
            {"epoch_loss", *(n for r in self.rules for n in r.layered)}
        )
        self.on_diagnosis = on_diagnosis
        self._by_key: dict[tuple[str, str], Diagnosis] = {}
        #: Diagnoses in the order they were first made.
        self.diagnoses: list[Diagnosis] = []
        #: Rules that raised, with the error (they are skipped from then on).
        self.broken: dict[str, str] = {}
        self.frames = 0
        self.seconds = 0.0

    def declare(self, instruments: Iterable[str], meta: Mapping[str, Any]) -> None:
        """The run's declared instrument keys and metadata (its hello frame)."""
        self.history.declare(instruments, meta)

    def feed(self, step: int, values: Mapping[str, Any]) -> list[Diagnosis]:
        """Add one frame's readings and evaluate the rules they concern.

        Returns the diagnoses made for the first time by this frame.
        """
        start = time.perf_counter()
        h = self.history
        updated = h.feed(step, values)
        new: list[Diagnosis] = []
        if updated:
            for rule in self.rules:
                if rule.name in self.broken or not updated.intersection(rule.needs):
                    continue
                if not h.tracked.issuperset(rule.needs) or rule.applies(h):
                    continue
                try:
                    finding = rule.check(h, self._th[rule.name])
                except Exception as exc:  # noqa: BLE001 - a user rule must not stop ingest
                    self.broken[rule.name] = f"{type(exc).__name__}: {exc}"
                    log.warning("glasscockpit: rule %r failed: %s", rule.name, exc)
                    continue
                if finding is not None:
                    made = self._record(rule, finding)
                    if made is not None:
                        new.append(made)
        self.frames += 1
        self.seconds += time.perf_counter() - start
        if self.on_diagnosis is not None:
            for d in new:
                self.on_diagnosis(d)
        return new

    def _record(self, rule: Rule, finding: Finding) -> Diagnosis | None:
        key = (rule.name, finding.key)
        known = self._by_key.get(key)
        if known is not None:
            known.add(finding)
            return None
        first = finding.since if finding.since is not None else finding.step
        d = Diagnosis(
            rule=rule.name,
            title=rule.title,
            severity=finding.severity or rule.severity,
            key=finding.key,
            first_step=min(first, finding.step),
            last_step=finding.step,
            evidence={},
            thresholds=dict(self._th[rule.name]),
            summary=finding.summary,
            explanation=rule.explanation,
            remedies=tuple(rule.remedies),
            source=rule.source,
            panels=rule.evidence_panels(),
            detected_step=self.history.step,
            detected_at=time.time(),
        )
        d.add(finding)
        self._by_key[key] = d
        self.diagnoses.append(d)
        return d

    def unavailable(self) -> list[dict[str, Any]]:
        """Rules that cannot judge this run: what they need, or why not."""
        h = self.history
        out: list[dict[str, Any]] = []
        for rule in self.rules:
            missing = [n for n in rule.needs if n not in h.tracked]
            reason = (
                "needs instrument(s) " + ", ".join(missing)
                if missing
                else rule.applies(h) or self.broken.get(rule.name)
            )
            if reason:
                out.append(
                    {
                        "rule": rule.name,
                        "title": rule.title,
                        "needs": missing,
                        "reason": reason,
                    }
                )
        return out

    @property
    def us_per_frame(self) -> float:
        """Mean evaluation time per fed frame, in microseconds."""
        return 1e6 * self.seconds / self.frames if self.frames else 0.0

    def report(self) -> dict[str, Any]:
        """JSON-ready: the diagnoses, the rules that could not run, the cost."""
        return {
            "last_step": self.history.step,
            "diagnoses": [d.as_dict() for d in self.diagnoses],
            "unavailable": self.unavailable(),
            "frames": self.frames,
            "us_per_frame": self.us_per_frame,
        }
