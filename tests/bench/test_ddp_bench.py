"""bench.ddp pairs each Cockpit block with the plain blocks on either side of it."""

from __future__ import annotations

import pytest

from bench.ddp import SETS, _ratios


def test_each_block_is_divided_by_its_neighbouring_plain_blocks() -> None:
    # Per repeat and set: plain, per-rank, plain, global, plain. A drifting
    # machine: every block is slower than the one before it.
    rows: dict[str, list[dict[str, float]]] = {"plain": []}
    clock = 10.0
    for _ in range(3):
        for name in SETS:
            for kind, factor in (
                ("plain", 1),
                ("per-rank", 2),
                ("plain", 1),
                ("global", 3),
                ("plain", 1),
            ):
                key = "plain" if kind == "plain" else f"{kind} | {name}"
                rows.setdefault(key, []).append({"ms": clock * factor})
                clock += 1.0
    ratios = _ratios(rows, 3)
    for name in SETS:
        # Neighbours at clock−1 and clock+1 average to the block's own clock.
        assert ratios[f"per-rank | {name}"] == pytest.approx(2.0)
        assert ratios[f"global | {name}"] == pytest.approx(3.0)
