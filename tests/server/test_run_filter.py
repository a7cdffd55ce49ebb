"""The run filter cannot be made to backtrack (ReDoS): it matches with RE2."""

from __future__ import annotations

import threading

import pytest

from glasscockpit.dashboard.run_filter import MAX_PATTERN, filter_runs, run_matcher

EVIL = ["^(a+)+$", "(a|a)*$", "^(a|aa)+$", "(.*a){20}$", "^(([a-z])+.)+[A-Z]([a-z])+$"]


def runs(*ids: str) -> list[dict[str, str]]:
    return [{"run": i} for i in ids]


@pytest.mark.parametrize("pattern", EVIL)
def test_catastrophic_patterns_finish(pattern):
    # With Python's re, ^(a+)+$ on 26 a's and a b took 8-10 s; 40 take days.
    ids = runs("a" * 40 + "b", "a" * 127 + "!", "digits-sgd")
    done: list[list[dict[str, str]]] = []
    worker = threading.Thread(target=lambda: done.append(filter_runs(ids, pattern)))
    worker.start()
    worker.join(30)
    assert done, f"{pattern!r} is still matching"


def test_regexes_match_case_insensitively_and_bad_ones_as_text():
    ids = runs("lr-0.1", "lr-0.01", "Adam-(b)", "digits-sgd-2")
    assert [r["run"] for r in filter_runs(ids, "^lr")] == ["lr-0.1", "lr-0.01"]
    assert [r["run"] for r in filter_runs(ids, "ADAM")] == ["Adam-(b)"]
    assert [r["run"] for r in filter_runs(ids, "-(b")] == ["Adam-(b)"]  # not a regex
    assert [r["run"] for r in filter_runs(ids, r"(d)\1")] == []  # RE2 has no \1
    assert [r["run"] for r in filter_runs(ids, r"-\d$")] == ["digits-sgd-2"]
    assert filter_runs(ids, "") == ids
    assert filter_runs(ids, None) == ids


def test_long_patterns_are_cut():
    assert run_matcher("x" * MAX_PATTERN + "y")("x" * MAX_PATTERN)
