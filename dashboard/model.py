"""Pure data of the grid: which panels exist, which series each draws, view options.

Everything here is JSON-like (it lives in ``dcc.Store``s) and free of Dash, so
the figure builders and the live loop share one definition of "a panel".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LINE_KINDS = frozenset({"scalar", "per_layer"})
TOTAL = "total"

#: Defaults of PanelSpec fields that an older server may not report.
PANEL_DEFAULTS: dict[str, Any] = {
    "title": "",
    "y_label": "",
    "log_y": False,
    "group": "other",
    "help": "",
    "ref_lines": [],
    "band": None,
    "smooth": False,
    "distribution": "",
    "card": "",
    "x_label": "",
}


@dataclass(frozen=True)
class ViewOptions:
    """The global controls: smoothing weight, x axis, total or per-layer lines."""

    smoothing: float = 0.6
    x_axis: str = "step"  # step | wall | relative (seconds since the run began)
    layers: bool = False

    @classmethod
    def parse(cls, smoothing: Any, x_axis: Any, layers: Any) -> ViewOptions:
        """From raw control values, clamped to what the builders accept."""
        try:
            w = float(smoothing)
        except (TypeError, ValueError):
            w = 0.0
        return cls(
            smoothing=min(max(w, 0.0), 0.99),
            x_axis=x_axis if x_axis in ("wall", "relative") else "step",
            layers=layers == "layers",
        )

    def key(self) -> str:
        """A short signature; a change means every figure is rebuilt."""
        return f"{self.smoothing:.3f}|{self.x_axis}|{int(self.layers)}"


def panel_of(spec: dict[str, Any], extras: dict[str, Any] | None) -> dict[str, Any]:
    """Full panel fields of one instrument: run_detail's panel plus later fields."""
    return {**PANEL_DEFAULTS, **spec.get("panel", {}), **(extras or {})}


def build_panels(
    runs: list[str],
    details: dict[str, dict[str, Any]],
    extras: dict[str, dict[str, dict[str, Any]]],
) -> list[dict[str, Any]]:
    """The grid's panels for the selected runs, in the order instruments arrived.

    A panel is ``{"id", "kind", "title", "help", "group", ... PanelSpec fields,
    "members": [{"name", "title", "schedule"}]}``. Line instruments that share a
    ``card`` become one panel with several members; the first run that has an
    instrument decides how it is drawn.
    """
    panels: dict[str, dict[str, Any]] = {}
    for run in runs:
        detail = details.get(run)
        if detail is None:
            continue
        for spec in detail["instruments"]:
            panel = panel_of(spec, extras.get(run, {}).get(spec["name"]))
            card = panel["card"] if spec["kind"] in LINE_KINDS else ""
            pid = f"card:{card}" if card else spec["name"]
            member = {
                "name": spec["name"],
                "title": panel["title"],
                "schedule": spec.get("schedule", ""),
            }
            if pid not in panels:
                panels[pid] = {
                    **panel,
                    "id": pid,
                    "kind": spec["kind"],
                    "title": card or panel["title"],
                    "members": [member],
                }
            elif member["name"] not in [m["name"] for m in panels[pid]["members"]]:
                merged = panels[pid]
                merged["members"].append(member)
                if panel["help"] and panel["help"] not in merged["help"]:
                    merged["help"] = f"{merged['help']} {panel['help']}".strip()
    out = list(panels.values())
    for run in runs:  # Cockpit's test plane, beside the tests it pairs
        detail = details.get(run)
        names = {i["name"] for i in detail["instruments"]} if detail else set()
        plane = plane_panel(names)
        if plane is not None:
            at = next(
                (i for i, p in enumerate(out) if PLANE_MEMBERS[1] in _names(p)),
                len(out) - 1,
            )
            out.insert(at + 1, plane)
            break
    return out


def _names(panel: dict[str, Any]) -> list[str]:
    return [m["name"] for m in panel["members"]]


#: The synthetic panel kind of Cockpit's gradient test plane, and the
#: instruments it pairs by step: (x, y).
PLANE = "test_plane"
PLANE_MEMBERS = ("ortho_test", "inner_test")


def plane_panel(names: set[str]) -> dict[str, Any] | None:
    """The gradient test plane's panel when a run has both tests, else None."""
    if not set(PLANE_MEMBERS) <= names:
        return None
    return {
        **PANEL_DEFAULTS,
        "id": "plane:gradient-tests",
        "kind": PLANE,
        "title": "Gradient test plane",
        "group": "gradients",
        "help": "x: orthogonality test ν, y: inner-product test θ of each step "
        "(colour: iteration; cross: the newest). Inside the green square both "
        "tests accept the batch size; points beyond it call for a larger batch.",
        "y_label": "inner-product θ",
        "x_label": "orthogonality ν",
        "members": [{"name": n, "title": n, "schedule": ""} for n in PLANE_MEMBERS],
    }


def series_keys(keys: list[str], layers: bool) -> list[str]:
    """Keys drawn for one instrument: only the total, or the total and every layer.

    Keys of an instrument without a total are not layers but series of their
    own (``cockpit.log``'s train/valid/test splits): all of them are drawn.
    """
    if layers or TOTAL not in keys:
        return list(keys)
    return [TOTAL]


def sid(run: str, name: str, key: str) -> str:
    """A series id; ``|`` cannot occur in run ids or instrument names we accept."""
    return f"{run}|{name}|{key}"


def panel_series(
    panel: dict[str, Any],
    runs: list[str],
    keys: dict[str, dict[str, list[str]]],
    layers: bool,
) -> list[list[str]]:
    """``[run, instrument, key]`` for every line the panel draws, in trace order.

    ``keys`` is ``{run: {instrument: series keys}}`` as run_detail reports them.
    """
    out: list[list[str]] = []
    for run in runs:
        for member in panel["members"]:
            for key in series_keys(keys.get(run, {}).get(member["name"], []), layers):
                out.append([run, member["name"], key])
    return out


def to_float(v: Any) -> float | None:
    """A JSON reading as a float ("NaN"/"Infinity" strings map back; junk: None)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v)
    if v == "NaN":
        return float("nan")
    if v == "Infinity":
        return float("inf")
    if v == "-Infinity":
        return float("-inf")
    return None
