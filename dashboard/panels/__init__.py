"""Pure figure builders, keyed by instrument kind."""

from __future__ import annotations

from glasscockpit.dashboard.panels.histogram import histogram_figure
from glasscockpit.dashboard.panels.line import extend_payload, line_figure, plot_values

#: Kinds drawn as lines (series with keys) versus snapshots (histograms).
LINE_KINDS = frozenset({"scalar", "per_layer"})
SNAPSHOT_KINDS = frozenset({"histogram", "heatmap"})

__all__ = [
    "LINE_KINDS",
    "SNAPSHOT_KINDS",
    "extend_payload",
    "histogram_figure",
    "line_figure",
    "plot_values",
]
