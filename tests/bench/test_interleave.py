"""The agent benchmark's paired ratios cancel a drifting machine speed."""

from __future__ import annotations

import pytest

import bench.agent_overhead as ao


def test_paired_ratios_cancel_a_drift_that_medians_keep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A fake clock: plain steps take 1 unit, the row 2 units, both times a
    # machine speed that halves over the run. Medians taken apart drift; the
    # ratio of neighbouring blocks stays 2.
    clock = [0.0]
    calls = [0]

    def slowdown() -> float:
        return 1.0 + calls[0] / 200

    def plain(_: int) -> None:
        calls[0] += 1
        clock[0] += 1.0 * slowdown()

    def row(_: int) -> None:
        calls[0] += 1
        clock[0] += 2.0 * slowdown()

    monkeypatch.setattr(ao.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(ao.gc, "collect", lambda: 0)
    steps = {"plain": (plain, [0]), "row": (row, [0]), "other": (plain, [0])}
    ratios: dict[str, float] = {}
    ms = ao.interleave(steps, repeats=5, block_s=3.0, ratios=ratios)
    assert ratios["plain"] == 1.0
    assert ratios["row"] == pytest.approx(2.0, rel=0.02)
    assert ratios["other"] == pytest.approx(1.0, rel=0.02)
    assert set(ms) == set(steps)
    # Without ``ratios``: the plain blocks are not repeated between rows.
    calls[0] = 0
    before = calls[0]
    ao.interleave(steps, repeats=1, block_s=3.0)
    assert calls[0] - before < 20
