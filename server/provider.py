"""The in-process DataProvider the dashboard reads through."""

from __future__ import annotations

from typing import Any

from glasscockpit.server import views
from glasscockpit.server.store import RunStore


class StoreProvider:
    """Serves the dashboard straight from the RunStore, in the REST API's shapes."""

    def __init__(self, store: RunStore, stale_after_s: float) -> None:
        self.store = store
        self.stale_after_s = stale_after_s

    def list_runs(self) -> list[dict[str, Any]]:
        """All runs, newest first, with whether each has an agent connected.

        ``connected`` lets the dashboard tell a run whose agent reconnects
        from one whose process died without a bye frame (SIGKILL, OOM).
        """
        runs = views.list_runs(self.store, self.stale_after_s)
        with self.store.lock:
            for summary in runs:
                run = self.store.runs.get(summary["run"])
                summary["connected"] = bool(run is not None and run.connected)
        return runs

    def run_detail(self, run_id: str) -> dict[str, Any]:
        """One run's detail."""
        return views.run_detail(self.store, run_id, self.stale_after_s)

    def series(
        self, run_id: str, name: str, key: str, max_points: int, after_step: int | None
    ) -> dict[str, Any]:
        """One series."""
        return views.series_view(self.store, run_id, name, key, max_points, after_step)

    def histograms(self, run_id: str, name: str, last: int) -> dict[str, Any]:
        """Histogram snapshots."""
        return views.histograms_view(self.store, run_id, name, last)

    def diagnoses(self, run_id: str) -> dict[str, Any]:
        """The run's diagnoses, as ``GET /v1/runs/{run}/diagnoses``."""
        return views.diagnoses_view(self.store, run_id)

    def instrument_panels(self, run_id: str) -> dict[str, dict[str, Any]]:
        """Every PanelSpec field of each instrument of one run."""
        return views.panel_specs(self.store, run_id)
