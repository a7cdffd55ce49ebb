"""Pure figure builders, keyed by instrument kind (``RENDERERS``).

Line kinds (scalar, per_layer) are drawn by ``line`` and updated with
``extendData``; snapshot kinds (histogram, heatmap) are redrawn by
``histogram`` when a new snapshot arrives.
"""

from __future__ import annotations

from glasscockpit.dashboard.model import LINE_KINDS
from glasscockpit.dashboard.panels.histogram import heatmap_figure, histogram_figure
from glasscockpit.dashboard.panels.line import line_extend, line_figure, trace_plan

SNAPSHOT_KINDS = frozenset({"histogram", "heatmap"})

__all__ = [
    "LINE_KINDS",
    "SNAPSHOT_KINDS",
    "heatmap_figure",
    "histogram_figure",
    "line_extend",
    "line_figure",
    "trace_plan",
]
