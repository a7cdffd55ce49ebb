"""Diagnoses of a training run from its readings (standard library only).

One implementation of each rule, shared by the agent and the server: rules read
numbers and short series (``History``), never tensors. See docs/diagnosis.md for
every rule's formula, threshold and source, and ``base.py`` for writing a rule.
"""

from __future__ import annotations

from glasscockpit.diagnosis.base import (
    SEVERITIES,
    Diagnosis,
    Finding,
    Rule,
    Severity,
    Thresholds,
)
from glasscockpit.diagnosis.diagnoser import Diagnoser, default_rules
from glasscockpit.diagnosis.history import History, Snapshot, Window, median, share
from glasscockpit.diagnosis.rules import RULES
from glasscockpit.diagnosis.settings import DiagnosisSettings

__all__ = [
    "RULES",
    "SEVERITIES",
    "Diagnoser",
    "Diagnosis",
    "DiagnosisSettings",
    "Finding",
    "History",
    "Rule",
    "Severity",
    "Snapshot",
    "Thresholds",
    "Window",
    "default_rules",
    "median",
    "share",
]
