"""Pure figure builders: given series, the figure has the right traces, axes, scales."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import pytest
from hypothesis import given
from hypothesis import strategies as st

from glasscockpit.dashboard.model import (
    ViewOptions,
    build_panels,
    panel_series,
    series_keys,
    sid,
)
from glasscockpit.dashboard.panels import histogram_figure as histogram_dict
from glasscockpit.dashboard.panels import line_extend
from glasscockpit.dashboard.panels import line_figure as line_dict
from glasscockpit.dashboard.panels.distribution import (
    ALPHA_LIMIT,
    ALPHA_SERIES_CLIP,
    recent_window,
)
from glasscockpit.dashboard.panels.line import trace_plan
from glasscockpit.dashboard.smoothing import ema

RAW = ViewOptions(smoothing=0.0)


def line_figure(*args):
    """The builder's dict, read back through go.Figure (which also validates it)."""
    fig, state = line_dict(*args)
    return go.Figure(fig), state


def histogram_figure(*args):
    fig, state = histogram_dict(*args)
    return go.Figure(fig), state


def spec(name, kind="scalar", **panel):
    base = {"title": name.title(), "y_label": "y", "log_y": False, "group": "g"}
    return {
        "name": name,
        "kind": kind,
        "schedule": "every step",
        "panel": {**base, "help": f"read {name}", **panel},
    }


def panel_for(*specs, runs=("r",)):
    details = {r: {"instruments": list(specs)} for r in runs}
    panels = build_panels(list(runs), details, {})
    assert len(panels) == 1
    return panels[0]


def series(steps, values, t0=1000.0):
    return {
        "step": list(steps),
        "wall_time": [t0 + s for s in steps],
        "value": list(values),
    }


def draw(panel, data, keys, runs=("r",), opts=RAW, log_y=False):
    ids = panel_series(panel, list(runs), keys, opts.layers)
    colors = dict(zip(runs, ("#111111", "#222222", "#333333"), strict=False))
    fig, state = line_figure(panel, ids, data, list(runs), colors, opts, log_y)
    return fig, state, ids


# -- smoothing ------------------------------------------------------------------


def reference_ema(values, w):
    """Closed form of the debiased EMA over the finite values."""
    finite = [v for v in values if v is not None]
    out = []
    for n in range(1, len(finite) + 1):
        acc = sum((1 - w) * w ** (n - k) * finite[k - 1] for k in range(1, n + 1))
        out.append(acc / (1 - w**n))
    return out


@given(
    st.lists(st.none() | st.floats(-1e3, 1e3), max_size=40),
    st.floats(0, 0.99),
    st.integers(0, 40),
)
def test_ema_matches_closed_form_and_continues_across_calls(values, w, cut):
    whole, _ = ema(values, w)
    assert [v is None for v in whole] == [v is None for v in values]
    got = [v for v in whole if v is not None]
    assert got == pytest.approx(reference_ema(values, w), rel=1e-9, abs=1e-6)
    first, state = ema(values[:cut], w)
    second, _ = ema(values[cut:], w, state)
    nan = [math.nan if v is None else v for v in whole]
    joined = [math.nan if v is None else v for v in first + second]
    assert joined == pytest.approx(nan, rel=1e-12, abs=1e-9, nan_ok=True)


def test_ema_of_a_constant_is_the_constant_exactly():
    out, state = ema([0.1] * 50, 0.6)
    assert out == [0.1] * 50  # not 0.1 ± ulps (a log axis would span one ulp)
    more, _ = ema([0.1] * 5, 0.6, state)
    assert more == [0.1] * 5


def test_ema_starts_at_the_first_value_not_at_zero():
    out, _ = ema([5.0, 5.0, 5.0], 0.9)
    assert out == pytest.approx([5.0, 5.0, 5.0])
    with pytest.raises(ValueError, match="0, 1"):
        ema([1.0], 1.0)


# -- model ------------------------------------------------------------------------


def test_card_merges_instruments_into_one_panel_with_their_help():
    tests = [
        spec(n, card="Gradient tests", band=[0.0, 1.0])
        for n in ("norm_test", "inner_test")
    ]
    details = {"r": {"instruments": [*tests, spec("loss")]}}
    panels = build_panels(["r"], details, {})
    assert [p["id"] for p in panels] == ["card:Gradient tests", "loss"]
    card = panels[0]
    assert card["title"] == "Gradient tests"
    assert [m["name"] for m in card["members"]] == ["norm_test", "inner_test"]
    assert "read norm_test" in card["help"] and "read inner_test" in card["help"]


def test_extras_from_the_provider_override_run_detail_fields():
    details = {"r": {"instruments": [spec("alpha")]}}
    extras = {"r": {"alpha": {"distribution": "alpha", "ref_lines": [0.0]}}}
    (panel,) = build_panels(["r"], details, extras)
    assert panel["distribution"] == "alpha"
    assert panel["ref_lines"] == [0.0]
    assert panel["band"] is None  # default for fields nobody sent


def test_union_of_runs_keeps_first_appearance_order():
    details = {
        "a": {"instruments": [spec("loss"), spec("lr")]},
        "b": {"instruments": [spec("alpha"), spec("loss")]},
    }
    assert [p["id"] for p in build_panels(["a", "b"], details, {})] == [
        "loss",
        "lr",
        "alpha",
    ]


def test_total_or_every_layer():
    keys = ["total", "0.weight", "0.bias"]
    assert series_keys(keys, layers=False) == ["total"]
    assert series_keys(keys, layers=True) == keys
    # Without a total the keys are series of their own (cockpit.log's splits).
    assert series_keys(["train", "test"], layers=False) == ["train", "test"]
    assert ViewOptions.parse("0.3", "wall", "layers") == ViewOptions(0.3, "wall", True)
    assert ViewOptions.parse(None, "?", "total") == ViewOptions(0.0, "step", False)
    assert ViewOptions.parse(5, "step", "total").smoothing == 0.99


# -- line panels ----------------------------------------------------------------


def test_scalar_panel_draws_its_points_on_a_linear_or_log_axis():
    panel = panel_for(spec("loss"))
    data = {sid("r", "loss", "total"): series([0, 1, 2], [3.0, 2.0, 1.5])}
    keys = {"r": {"loss": ["total"]}}
    fig, state, _ = draw(panel, data, keys)
    raw = fig.data[0]
    assert list(raw.x) == [0, 1, 2] and list(raw.y) == [3.0, 2.0, 1.5]
    assert raw.mode == "lines"
    sparse = {sid("r", "loss", "total"): series([49, 99], [0.5, 0.7])}
    assert draw(panel, sparse, keys)[0].data[0].mode == "lines+markers"
    assert fig.layout.yaxis.type == "linear"
    assert fig.layout.yaxis.title.text == "y"
    assert not fig.layout.xaxis.title.text  # steps need no title (TensorBoard)
    assert len(fig.data) == 2  # raw + (empty) NaN/Inf markers
    assert state["points"] == 3 and state["bad"] == 0
    log_fig, _, _ = draw(panel, data, keys, log_y=True)
    assert log_fig.layout.yaxis.type == "log"


def test_smoothing_adds_a_debiased_ema_line_and_fades_the_raw_one():
    panel = panel_for(spec("grad_norm"))
    values = [1.0, 3.0, 2.0, 5.0]
    data = {sid("r", "grad_norm", "total"): series(range(4), values)}
    fig, state, _ = draw(
        panel, data, {"r": {"grad_norm": ["total"]}}, opts=ViewOptions(0.5)
    )
    raw, smooth = fig.data[0], fig.data[1]
    assert raw.opacity == pytest.approx(0.3)
    assert list(smooth.y) == pytest.approx(reference_ema(values, 0.5))
    assert state["ema"][sid("r", "grad_norm", "total")][1] == 4


def test_smooth_panels_draw_dots_under_a_line_even_with_the_slider_at_zero():
    panel = panel_for(spec("loss", smooth=True))
    data = {sid("r", "loss", "total"): series(range(3), [1.0, 2.0, 3.0])}
    fig, _, _ = draw(panel, data, {"r": {"loss": ["total"]}})
    assert fig.data[0].mode == "markers"
    assert fig.data[1].mode == "lines"
    assert list(fig.data[1].y) == pytest.approx(reference_ema([1.0, 2.0, 3.0], 0.6))


def test_wall_time_axis_is_a_date_axis_in_milliseconds():
    panel = panel_for(spec("loss"))
    data = {sid("r", "loss", "total"): series([0, 1], [1.0, 2.0], t0=1700000000.0)}
    fig, _, _ = draw(
        panel, data, {"r": {"loss": ["total"]}}, opts=ViewOptions(0.0, "wall")
    )
    assert fig.layout.xaxis.type == "date"
    assert list(fig.data[0].x) == [1700000000000.0, 1700000001000.0]


def test_per_layer_toggle_adds_one_line_per_layer():
    panel = panel_for(spec("grad_norm", kind="per_layer"))
    keys = {"r": {"grad_norm": ["total", "0.weight", "0.bias"]}}
    data = {
        sid("r", "grad_norm", k): series([0, 1], [1.0, 2.0])
        for k in keys["r"]["grad_norm"]
    }
    total, _, ids = draw(panel, data, keys)
    assert [t.name for t in total.data if t.name != "NaN/Inf"] == ["Grad_Norm"]
    layers, _, ids = draw(panel, data, keys, opts=ViewOptions(0.0, "step", True))
    names = [t.name for t in layers.data if t.name != "NaN/Inf"]
    assert names == ["Grad_Norm", "0.weight", "0.bias"]
    assert layers.data[0].line.width > layers.data[1].line.width  # total is bold
    assert layers.layout.showlegend


def test_several_runs_overlay_in_their_own_colours():
    panel = panel_for(spec("loss"), runs=("a", "b"))
    keys = {"a": {"loss": ["total"]}, "b": {"loss": ["total"]}}
    data = {
        sid("a", "loss", "total"): series([0, 1], [1.0, 0.5]),
        sid("b", "loss", "total"): series([0, 1, 2], [2.0, 1.0, 0.7]),
    }
    fig, _, _ = draw(panel, data, keys, runs=("a", "b"))
    a, b = fig.data[0], fig.data[1]
    assert (a.name, b.name) == ("a", "b")
    assert (a.line.color, b.line.color) == ("#111111", "#222222")
    assert len(b.x) == 3
    assert [t.name for t in fig.data[2:]] == ["NaN/Inf a", "NaN/Inf b"]


def test_nan_and_inf_become_gaps_and_red_markers():
    panel = panel_for(spec("loss"))
    data = {
        sid("r", "loss", "total"): series(
            range(5), [1.0, "NaN", 2.0, "Infinity", "-Infinity"]
        )
    }
    fig, state, _ = draw(panel, data, {"r": {"loss": ["total"]}}, opts=ViewOptions(0.5))
    raw, smooth, bad = fig.data
    assert list(raw.y) == [1.0, None, 2.0, None, None]
    assert smooth.y[1] is None and smooth.y[2] is not None
    assert list(bad.x) == [1, 3, 4]
    assert list(bad.y) == [0.95, 0.95, 0.05]  # NaN, +Inf top; -Inf bottom
    assert bad.yaxis == "y2" and bad.showlegend
    assert [t.split(": ")[-1] for t in bad.text] == ["NaN", "+Inf", "-Inf"]
    assert state["bad"] == 3
    assert fig.layout.yaxis2.range == (0, 1)


def test_band_and_reference_lines_are_drawn_from_the_spec():
    panel = panel_for(spec("norm_test", band=[0.0, 1.0], ref_lines=[0.5, 2.0]))
    data = {sid("r", "norm_test", "total"): series([0], [0.3])}
    fig, _, _ = draw(panel, data, {"r": {"norm_test": ["total"]}})
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert [(r.y0, r.y1) for r in rects] == [(0.0, 1.0)]
    assert sorted(line.y0 for line in lines) == [0.5, 2.0]


def test_card_panel_labels_lines_by_instrument():
    tests = [spec(n, card="Gradient tests") for n in ("norm_test", "ortho_test")]
    panel = panel_for(*tests)
    keys = {"r": {"norm_test": ["total"], "ortho_test": ["total"]}}
    data = {sid("r", n, "total"): series([0], [0.5]) for n in keys["r"]}
    fig, _, _ = draw(panel, data, keys)
    assert [t.name for t in fig.data[:2]] == ["Norm_Test", "Ortho_Test"]


def apply_extend(fig_dict, payload):
    """What Plotly.extendTraces does to the figure's data (and where it refuses)."""
    update, indices, limits = payload
    assert set(update) == set(limits)
    for n, i in enumerate(indices):
        assert len(update["x"][n]) == len(update["y"][n])
        for attr in update:
            old = fig_dict["data"][i].get(attr)
            # Plotly: "cannot extend missing or non-array attribute"
            assert old is not None, f"trace {i} has no {attr}"
            keep = limits[attr][n]  # maxPoints: the newest values are kept
            fig_dict["data"][i][attr] = (list(old) + list(update[attr][n]))[-keep:]
    return fig_dict


@pytest.mark.parametrize("smooth", [0.0, 0.7])
@pytest.mark.parametrize("distribution", ["", "alpha"])
def test_full_figure_equals_first_part_plus_extend(smooth, distribution):
    panel = panel_for(spec("alpha", kind="per_layer", distribution=distribution))
    keys = {"r": {"alpha": ["total", "l1"]}}
    rng = np.random.default_rng(0)
    values = {k: [float(v) for v in rng.normal(0, 1, 30)] for k in ("total", "l1")}
    values["total"][7] = "NaN"
    opts = ViewOptions(smooth, "step", True)

    def data(lo, hi):
        return {
            sid("r", "alpha", k): series(range(lo, hi), values[k][lo:hi])
            for k in ("total", "l1")
        }

    whole, whole_state, ids = draw(panel, data(0, 30), keys, opts=opts)
    part, state, ids = draw(panel, data(0, 18), keys, opts=opts)
    payload, new_state = line_extend(panel, ids, data(18, 30), ["r"], opts, state)
    extended = apply_extend(part.to_dict(), payload)
    target = whole.to_dict()
    for got, want in zip(extended["data"], target["data"], strict=True):
        if want.get("type") == "histogram" and want.get("name", "").startswith("last"):
            # The "last 10 %" keeps the window of the first drawing, rolling on.
            window = recent_window(18)
            assert (
                list(got["x"]) == list(want["x"])[-window:] or len(want["x"]) < window
            )
            continue
        assert list(got.get("x", [])) == pytest.approx(list(want.get("x", [])))
        got_y = [np.nan if v is None else v for v in got.get("y", [])]
        want_y = [np.nan if v is None else v for v in want.get("y", [])]
        assert got_y == pytest.approx(want_y, nan_ok=True)
    assert new_state["bad"] == whole_state["bad"] == 1
    assert line_extend(panel, ids, {}, ["r"], opts, new_state)[0] is None


def test_alpha_distribution_has_parabola_clipped_histograms_and_marks():
    panel = panel_for(spec("alpha", distribution="alpha"))
    values = [0.1] * 50 + [5.0, -7.0]
    data = {sid("r", "alpha", "total"): series(range(52), values)}
    fig, state, ids = draw(panel, data, {"r": {"alpha": ["total"]}})
    plan = trace_plan(panel, ids, ["r"], False)
    everything = fig.data[plan["dist"]["r"]]
    recent = fig.data[plan["recent"]["r"]]
    assert everything.type == "histogram" and everything.xaxis == "x2"
    assert max(everything.x) == ALPHA_LIMIT and min(everything.x) == -ALPHA_LIMIT
    assert len(recent.x) == recent_window(52) == state["recent_window"]
    parabola = fig.data[-1]
    assert list(parabola.y) == pytest.approx([x * x for x in parabola.x])
    marks = sorted(s.x0 for s in fig.layout.shapes if s.xref == "x2")
    assert marks == [-1.0, 0.0, 1.0]
    assert fig.layout.xaxis.domain[1] < fig.layout.xaxis2.domain[0]
    # The series keeps autoranging, but an ill-posed α of -300 cannot flatten it.
    clip = fig.layout.yaxis.autorangeoptions
    assert (clip.clipmin, clip.clipmax) == (-ALPHA_SERIES_CLIP, ALPHA_SERIES_CLIP)


# -- histogram panels -----------------------------------------------------------


def snapshot(step, counts, **edges):
    arrays = {"counts": np.asarray(counts, dtype=float)}
    arrays |= {k: np.asarray(v, dtype=float) for k, v in edges.items()}
    return {
        "step": step,
        "wall_time": 0.0,
        "arrays": {k: a.ravel().tolist() for k, a in arrays.items()},
        "shapes": {k: list(a.shape) for k, a in arrays.items()},
    }


def test_1d_histogram_is_a_heatmap_over_steps_plus_the_latest_bars():
    panel = panel_for(spec("grad_hist_1d", kind="histogram", x_label="gradient"))
    edges = [-1.0, 0.0, 1.0, 2.0]
    hist = {
        "snapshots": [
            snapshot(0, [1, 9, 0], edges=edges),
            snapshot(10, [0, 99, 999], edges=edges),
        ]
    }
    fig, state = histogram_figure(panel, hist)
    heat, bars = fig.data
    assert heat.type == "heatmap"
    assert list(heat.x) == [0, 10]
    assert list(heat.y) == [-0.5, 0.5, 1.5]
    z = np.asarray(heat.z)
    assert z.shape == (3, 2)  # [bins, steps]
    assert z[:, 1] == pytest.approx(np.log10(np.array([0, 99, 999]) + 1))
    assert bars.orientation == "h" and list(bars.x) == [1, 100, 1000]
    assert fig.layout.xaxis2.type == "log"
    assert fig.layout.yaxis.title.text == "gradient"
    assert state == {"step": 10}


def test_2d_histogram_uses_edges_and_marginal_sums():
    panel = panel_for(spec("grad_hist_2d", kind="heatmap", x_label="param"))
    counts = [[1, 2, 3], [4, 5, 6]]  # [ny=2, nx=3]
    hist = {
        "snapshots": [
            snapshot(5, counts, x_edges=[0.0, 1.0, 2.0, 3.0], y_edges=[-1.0, 0.0, 1.0])
        ]
    }
    fig, state = histogram_figure(panel, hist)
    heat, top, right = fig.data
    assert list(heat.x) == [0.5, 1.5, 2.5] and list(heat.y) == [-0.5, 0.5]
    assert np.asarray(heat.z) == pytest.approx(np.log10(np.asarray(counts) + 1))
    assert list(top.y) == [6, 8, 10]  # column sums + 1
    assert list(right.x) == [7, 16]  # row sums + 1
    assert "step 5" in fig.layout.xaxis.title.text
    assert state == {"step": 5}


def test_histogram_without_snapshots_or_edges_still_draws():
    panel = panel_for(spec("h", kind="histogram"))
    fig, state = histogram_figure(panel, {"snapshots": []})
    assert len(fig.data) == 0 and state == {"step": None}
    fig, _ = histogram_figure(panel, {"snapshots": [snapshot(1, [1, math.nan])]})
    assert list(fig.data[0].y) == [0.5, 1.5]  # bin indices when no edges came


def test_histogram_axis_titles_from_the_agent_specs():
    from glasscockpit.dashboard.panels.histogram import labels

    one_d = {
        "kind": "histogram",
        "y_label": "count",
        "x_label": "",
        "members": [{"name": "grad_hist_1d"}],
    }
    two_d = {
        "kind": "heatmap",
        "y_label": "gradient element",
        "x_label": "",
        "members": [{"name": "grad_hist_2d"}],
    }
    assert labels(one_d)[1] == "gradient element"  # the value axis, not "count"
    assert labels(two_d) == ("parameter value", "gradient element")
    custom = {**one_d, "x_label": "activation"}
    assert labels(custom)[1] == "activation"


def test_relative_time_axis_counts_seconds_from_the_run_start():
    from glasscockpit.dashboard.panels.line import split

    data = {"step": [0, 1], "wall_time": [1000.5, 1002.0], "value": [1.0, 2.0]}
    opts = ViewOptions.parse(0, "relative", "total")
    assert opts.x_axis == "relative"
    assert split(data, opts, 1000.0)[0] == [0.5, 2.0]
