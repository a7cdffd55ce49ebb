"""The rule interface: what a rule declares, what it returns, and a diagnosis.

A rule reads *readings* (numbers and short series kept by ``history.History``),
never tensors, so one implementation serves the agent and the server. To add a
rule of your own, subclass ``Rule``, fill in the class attributes and ``check``,
and pass an instance to ``Diagnoser(rules=(*RULES, MyRule()))``::

    class LossAboveTen(Rule):
        name = "loss_above_ten"
        title = "Loss above 10"
        severity = "warning"
        needs = ("loss",)
        thresholds = {"limit": 10.0}
        explanation = "The loss is larger than this task ever allows."
        remedies = ("Check the labels.",)
        source = "house rule"

        def check(self, h: History, th: Thresholds) -> Finding | None:
            s = h.series("loss")
            if s.last > th["limit"]:
                return Finding(s.last_step, {"loss": s.last})
            return None
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeAlias

if TYPE_CHECKING:
    from glasscockpit.diagnosis.history import History

Severity: TypeAlias = Literal["critical", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = ("critical", "warning", "info")
Thresholds: TypeAlias = Mapping[str, float]
#: Marker steps kept per diagnosis (the first ones and the newest ones).
MAX_STEPS = 64


@dataclass(frozen=True)
class Finding:
    """What ``Rule.check`` returns when its criterion holds at ``step``.

    Attributes:
        step: the newest step of the evidence.
        evidence: the readings that fired, as numbers (NaN/inf allowed).
        key: what the finding is about within the rule (a layer), "" for the run.
        summary: one line with the numbers, e.g. "α median 2.1 > 1 over 10".
        severity: overrides the rule's severity (e.g. a NaN is critical).
        since: first step of the evidence window (default ``step``).
    """

    step: int
    evidence: dict[str, float]
    key: str = ""
    summary: str = ""
    severity: Severity | None = None
    since: int | None = None


class Rule:
    """One diagnosis rule; subclass it (see the module docstring).

    Class attributes:
        name: stable identifier (settings, REST, dashboard).
        title: what the user reads, e.g. "Learning rate too large".
        severity: "critical" (training is lost), "warning" (act), "info".
        needs: instruments that must be tracked for ``check`` to run.
        thresholds: default thresholds by name; users override them.
        explanation: one paragraph: what the evidence means and why.
        remedies: the usual fixes, most likely first.
        source: the published criterion the rule implements.
        panels: instruments whose panels hold the evidence (default ``needs``).
        layered: instruments whose per-layer series ``check`` reads; the history
            keeps only the "total" of the others (it is fed every frame).
    """

    name: ClassVar[str]
    title: ClassVar[str]
    severity: ClassVar[Severity] = "warning"
    needs: ClassVar[tuple[str, ...]]
    thresholds: ClassVar[Mapping[str, float]] = {}
    explanation: ClassVar[str]
    remedies: ClassVar[tuple[str, ...]] = ()
    source: ClassVar[str] = ""
    panels: ClassVar[tuple[str, ...]] = ()
    #: Instruments whose per-layer keys ``check`` reads (others keep "total" only).
    layered: ClassVar[tuple[str, ...]] = ()

    def applies(self, h: History) -> str | None:
        """None when the rule can judge this run, else why not (e.g. "Adam").

        Called once the run's metadata is known; the default applies always.
        """
        del h
        return None

    def check(self, h: History, th: Thresholds) -> Finding | None:
        """Evaluate the criterion on the newest readings; None when it does not hold.

        Runs after every frame that updated one of ``needs``; it must be cheap
        (look at a bounded window, never the whole run).
        """
        raise NotImplementedError

    def evidence_panels(self) -> tuple[str, ...]:
        """Instruments whose panels the dashboard marks and links."""
        return self.panels or self.needs


@dataclass
class Diagnosis:
    """A rule's finding over the steps it held: what the user sees."""

    rule: str
    title: str
    severity: Severity
    key: str
    first_step: int
    last_step: int
    evidence: dict[str, float]
    thresholds: dict[str, float]
    summary: str
    explanation: str
    remedies: tuple[str, ...]
    source: str
    panels: tuple[str, ...]
    #: Steps at which the rule held (bounded: the first and newest ``MAX_STEPS``).
    steps: list[int] = field(default_factory=list)
    count: int = 0
    #: Step of the frame that made the diagnosis (readings of a step may come
    #: late: α of step t is finished at t + 1).
    detected_step: int = -1
    #: Wall-clock time (s) when the diagnosis was first made, for latency checks.
    detected_at: float = 0.0

    def add(self, finding: Finding) -> None:
        """Extend with one more step at which the rule held."""
        self.last_step = max(self.last_step, finding.step)
        self.evidence = dict(finding.evidence)
        self.summary = finding.summary or self.summary
        if finding.severity is not None and _rank(finding.severity) < _rank(
            self.severity
        ):
            self.severity = finding.severity
        self.count += 1
        if not self.steps or finding.step != self.steps[-1]:
            self.steps.append(finding.step)
            if len(self.steps) > MAX_STEPS:
                del self.steps[MAX_STEPS // 2]  # keep the first and newest halves

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (non-finite evidence as the strings "NaN", "Infinity")."""
        return {
            "rule": self.rule,
            "title": self.title,
            "severity": self.severity,
            "key": self.key,
            "first_step": self.first_step,
            "detected_step": self.detected_step,
            "last_step": self.last_step,
            "steps": list(self.steps),
            "count": self.count,
            "evidence": {k: json_number(v) for k, v in self.evidence.items()},
            "thresholds": dict(self.thresholds),
            "summary": self.summary,
            "explanation": self.explanation,
            "remedies": list(self.remedies),
            "source": self.source,
            "panels": list(self.panels),
        }


def json_number(x: float) -> float | str:
    """``x``, or "NaN"/"Infinity"/"-Infinity" (JSON has no non-finite numbers)."""
    if math.isfinite(x):
        return x
    if math.isnan(x):
        return "NaN"
    return "Infinity" if x > 0 else "-Infinity"


def _rank(s: Severity) -> int:
    return SEVERITIES.index(s)
