"""The dashboard's only door to run data (TensorBoard's DataProvider role).

The server hands the dashboard an object with these methods; the dashboard never
imports the server, so it can be pointed at any provider (in-process or remote).
"""

from __future__ import annotations

from typing import Any, Protocol


class DataProvider(Protocol):
    """Read access to runs, as plain JSON-like dicts (the REST API's shapes)."""

    def list_runs(self) -> list[dict[str, Any]]:
        """All runs, newest first."""

    def run_detail(self, run_id: str) -> dict[str, Any]:
        """Summary, meta, instruments (with series keys) and errors of one run."""

    def series(
        self, run_id: str, name: str, key: str, max_points: int, after_step: int | None
    ) -> dict[str, Any]:
        """One series: step, wall_time, value, min, max columns."""

    def histograms(self, run_id: str, name: str, last: int) -> dict[str, Any]:
        """The last snapshots of a histogram instrument."""

    def instrument_panels(self, run_id: str) -> dict[str, dict[str, Any]]:
        """Every PanelSpec field (including later, optional ones) per instrument."""

    def diagnoses(self, run_id: str) -> dict[str, Any]:
        """The run's diagnoses and unavailable rules (REST ``/diagnoses``)."""
