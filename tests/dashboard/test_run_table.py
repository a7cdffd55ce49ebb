"""Run table rows and the config comparison, built from run details."""

from __future__ import annotations

import time
from typing import Any

from glasscockpit.dashboard.run_table import (
    columns,
    compare,
    compare_table,
    flatten,
    row,
)


def _detail(run: str, status: str, config: Any = None, **meta: Any) -> dict[str, Any]:
    base = {
        "optimizer": "SGD",
        "optimizer_defaults": {"lr": 0.1, "momentum": 0.0},
        "parameters": 387,
        "started": 1000.0,
        **meta,
    }
    if config is not None:
        base["config"] = config
    return {
        "run": run,
        "status": status,
        "last_step": 9,
        "created": 1001.0,
        "last_frame_time": 1012.5,
        "meta": base,
    }


def test_row_reads_setup_from_meta_and_config():
    cfg = {"lr": 0.01, "batch_size": 32, "model": {"width": 64}, "tags": ["a"]}
    r = row(_detail("a", "finished", cfg), now=5000.0)
    assert r["id"] == r["run"] == "a"
    assert r["steps"] == 10
    assert r["duration_s"] == 12.5  # finished: start to last frame, not to now
    assert r["started"] == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1000.0))
    assert (r["optimizer"], r["parameters"]) == ("SGD", 387)
    assert (r["lr"], r["batch_size"]) == (0.01, 32)  # config wins over defaults
    assert r["config.model.width"] == 64
    assert r["config.tags"] == '["a"]'


def test_live_row_runs_to_now_and_falls_back_to_optimizer_lr():
    r = row(_detail("b", "live"), now=1030.0)
    assert r["duration_s"] == 30.0
    assert r["lr"] == 0.1
    assert r["batch_size"] is None
    assert not any(k.startswith("config.") for k in r)


def test_row_without_meta():
    r = row({"run": "c", "status": "live", "last_step": None, "meta": {}}, 5.0)
    assert (r["steps"], r["started"], r["duration_s"]) == (None, None, None)


def test_flatten_keeps_numbers_and_stringifies_the_rest():
    assert flatten({"a": {"b": 1, "c": True}, "d": None, "e": {}}) == {
        "a.b": 1,
        "a.c": "True",
        "d": None,
        "e": "{}",
    }


def test_columns_are_fixed_then_every_config_key():
    rows = [
        row(_detail("a", "live", {"x": 1}), 0.0),
        row(_detail("b", "live", {"w": 2}), 0.0),
    ]
    ids = [c["id"] for c in columns(rows)]
    assert ids[:3] == ["run", "status", "started"]
    assert ids[-2:] == ["config.w", "config.x"]
    assert columns(rows)[-1]["name"] == "x"


def test_compare_marks_differing_keys_and_missing_ones():
    a = row(_detail("a", "finished", {"lr": 0.1, "seed": 1, "only_a": "x"}), 0.0)
    b = row(_detail("b", "finished", {"lr": 0.3, "seed": 1}), 0.0)
    out = {k: (vals, diff) for k, vals, diff in compare([a, b])}
    assert out["lr"] == ([0.1, 0.3], True)
    assert out["seed"] == ([1, 1], False)
    assert out["only_a"] == (["x", None], True)
    assert out["optimizer"] == (["SGD", "SGD"], False)
    assert out["learning rate"] == ([0.1, 0.3], True)
    assert "batch size" not in out  # neither run has one


def test_compare_table_highlights_differences():
    a = row(_detail("a", "finished", {"lr": 0.1, "seed": 1}), 0.0)
    b = row(_detail("b", "finished", {"lr": 0.3, "seed": 1}), 0.0)
    table = compare_table([a, b])
    rows = table.children[1].children
    classes = {tr.children[0].children: tr.className for tr in rows}
    assert classes["lr"] == "cmp-diff"
    assert classes["seed"] == "cmp-same"
    assert "select two" in str(compare_table([a]).children)
