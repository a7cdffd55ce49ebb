"""Schedules decide which steps are tracked."""

from __future__ import annotations

import pytest

from glasscockpit.agent.lifecycle.schedules import (
    always,
    describe,
    every,
    log_spaced,
    never,
)


def test_every():
    assert [s for s in range(10) if every(3)(s)] == [0, 3, 6, 9]
    assert [s for s in range(10) if every(4, start=2)(s)] == [2, 6]
    with pytest.raises(ValueError, match="integer n >= 1"):
        every(0)


def test_log_spaced_is_dense_early_and_sparse_late():
    steps = [s for s in range(100_001) if log_spaced(per_decade=10, dense=10)(s)]
    assert steps[:11] == list(range(11))
    decade = [s for s in steps if 10_000 <= s < 100_000]
    assert 9 <= len(decade) <= 11
    assert steps == sorted(set(steps))


def test_always_never_and_labels():
    assert always(5) and not never(5)
    assert describe(always) == "every step"
    assert describe(every(10)) == "every 10"
    assert describe(lambda s: s % 2 == 0) == "<lambda>"
