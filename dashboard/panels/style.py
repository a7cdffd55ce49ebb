"""Layout shared by every panel figure."""

from __future__ import annotations

from typing import Any


def base_layout(panel: dict[str, Any], showlegend: bool) -> dict[str, Any]:
    """Compact margins, axis titles, legend only when there are several traces."""
    return {
        "margin": {"l": 50, "r": 10, "t": 10, "b": 35},
        "height": 260,
        "xaxis": {"title": {"text": "step"}},
        "yaxis": {"title": {"text": panel.get("y_label", "")}},
        "showlegend": showlegend,
        "legend": {"font": {"size": 9}},
        "template": "plotly_white",
        "uirevision": "keep",
    }
