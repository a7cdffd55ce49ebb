"""User settings of the rules: which are off, which thresholds differ.

Both sides read the same two strings: the agent from ``Cockpit(diagnosis=...)``
or ``GLASSCOCKPIT_DIAGNOSIS_DISABLE`` / ``GLASSCOCKPIT_DIAGNOSIS_THRESHOLDS``, the
server from the same environment variables (its settings).

* disable: comma-separated rule names, e.g. ``"plateau,early_stopping"``, or
  ``"all"``;
* thresholds: comma-separated ``rule.threshold=value``, e.g.
  ``"lr_too_large.alpha=1.5,divergence.blowup=100"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from glasscockpit.diagnosis.base import Rule


@dataclass(frozen=True)
class DiagnosisSettings:
    """Rules turned off and thresholds overridden, by rule name."""

    disabled: frozenset[str] = frozenset()
    thresholds: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    @staticmethod
    def parse(disable: str = "", thresholds: str = "") -> DiagnosisSettings:
        """Parse the two setting strings (see the module docstring).

        Raises:
            ValueError: a malformed ``rule.threshold=value`` entry.
        """
        off = frozenset(p.strip() for p in disable.split(",") if p.strip())
        out: dict[str, dict[str, float]] = {}
        for part in (p.strip() for p in thresholds.split(",")):
            if not part:
                continue
            name, eq, value = part.partition("=")
            rule, dot, key = name.strip().partition(".")
            if not (eq and dot and rule and key):
                raise ValueError(
                    f"Bad diagnosis threshold {part!r}: expected rule.threshold=value,"
                    " e.g. lr_too_large.alpha=1.5"
                )
            try:
                out.setdefault(rule, {})[key.strip()] = float(value)
            except ValueError:
                raise ValueError(
                    f"Bad diagnosis threshold {part!r}: {value.strip()!r} is not a "
                    "number"
                ) from None
        return DiagnosisSettings(off, out)

    def check(self, rules: Iterable[Rule]) -> None:
        """Raise ``ValueError`` naming any unknown rule or threshold."""
        known = {r.name: r for r in rules}
        unknown = sorted(self.disabled - set(known) - {"all"})
        if unknown:
            raise ValueError(
                f"Unknown diagnosis rule(s) {unknown} to disable; known: "
                f"{sorted(known)}"
            )
        for name, values in self.thresholds.items():
            if name not in known:
                raise ValueError(
                    f"Unknown diagnosis rule {name!r} in thresholds; known: "
                    f"{sorted(known)}"
                )
            bad = sorted(set(values) - set(known[name].thresholds))
            if bad:
                raise ValueError(
                    f"Rule {name!r} has no threshold(s) {bad}; it has "
                    f"{sorted(known[name].thresholds)}"
                )

    def is_on(self, rule: Rule) -> bool:
        """Whether ``rule`` runs."""
        return "all" not in self.disabled and rule.name not in self.disabled

    def for_rule(self, rule: Rule) -> dict[str, float]:
        """The rule's thresholds with the user's overrides."""
        return {**rule.thresholds, **self.thresholds.get(rule.name, {})}
