"""The built-in rules, one per file, and their registry (an explicit tuple)."""

from __future__ import annotations

from glasscockpit.diagnosis.base import Rule
from glasscockpit.diagnosis.rules.badly_scaled import BadlyScaled
from glasscockpit.diagnosis.rules.batch_too_small import BatchTooSmall
from glasscockpit.diagnosis.rules.dead_units import DeadUnits
from glasscockpit.diagnosis.rules.divergence import Divergence
from glasscockpit.diagnosis.rules.early_stopping import EarlyStoppingEB
from glasscockpit.diagnosis.rules.edge_of_stability import EdgeOfStability
from glasscockpit.diagnosis.rules.exploding import ExplodingGradients
from glasscockpit.diagnosis.rules.lr_too_large import LrTooLarge
from glasscockpit.diagnosis.rules.lr_too_small import LrTooSmall
from glasscockpit.diagnosis.rules.oscillation import Oscillation
from glasscockpit.diagnosis.rules.overfitting import Overfitting
from glasscockpit.diagnosis.rules.plateau import Plateau
from glasscockpit.diagnosis.rules.vanishing import VanishingGradients

#: Every built-in rule class, most urgent first (the order of the report).
RULES: tuple[type[Rule], ...] = (
    Divergence,
    ExplodingGradients,
    LrTooLarge,
    EdgeOfStability,
    Oscillation,
    VanishingGradients,
    DeadUnits,
    BadlyScaled,
    BatchTooSmall,
    LrTooSmall,
    Plateau,
    Overfitting,
    EarlyStoppingEB,
)

__all__ = [
    "RULES",
    "BadlyScaled",
    "BatchTooSmall",
    "DeadUnits",
    "Divergence",
    "EarlyStoppingEB",
    "EdgeOfStability",
    "ExplodingGradients",
    "LrTooLarge",
    "LrTooSmall",
    "Oscillation",
    "Overfitting",
    "Plateau",
    "VanishingGradients",
]
