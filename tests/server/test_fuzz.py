"""Hypothesis fuzzing of the decode → validate → store path that ingest runs."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from glasscockpit.protocol import Ack, ProtocolError, decode
from glasscockpit.server import views
from glasscockpit.server.errors import Rejected, rejection
from glasscockpit.server.store import Limits, RunStore
from tests.server.strategies import wire_bytes

LIMITS = Limits(max_instruments=8, max_keys=8, max_array_elements=64)


def feed(store: RunStore, data: bytes) -> str:
    """What ingest does with one message; returns the outcome's name."""
    try:
        frame = decode(data, max_size=4096)
        if isinstance(frame, Ack):
            return "ack"
        store.ingest(frame, raw=data)
    except ProtocolError as exc:
        rejected = rejection(exc)
        assert rejected.ws_code in (1002, 1007, 1009)
        return rejected.reason
    except Rejected as exc:
        assert exc.ws_code in (1007, 1008)
        assert exc.reason in ("schema", "nonfinite", "limit")
        return exc.reason
    return "stored"


def assert_json_safe(store: RunStore) -> None:
    """Every view of every run serialises as strict JSON (no NaN literals)."""
    json.dumps(views.list_runs(store, 60.0), allow_nan=False)
    for run_id in list(store.runs):
        json.dumps(views.export_json(store, run_id, 60.0), allow_nan=False)
        views.export_csv(store, run_id)


def check_stream(messages: list[bytes]) -> None:
    store = RunStore(max_points=8, max_histograms=4, max_runs=3, limits=LIMITS)
    for data in messages:
        feed(store, data)
    assert len(store.runs) <= 3
    for run in store.runs.values():
        assert len(run.names) <= LIMITS.max_instruments
        assert all(len(s) <= 8 for s in run.series.values())
        assert all(len(h) <= 4 for h in run.histograms.values())
    assert_json_safe(store)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(wire_bytes, max_size=8))
@example(  # a 0-d float32 signalling NaN: widening it warned inside a view
    [
        b"\x88\xa1t\xa8readings\xa4step\x00\xa9wall_time\xcb"
        + bytes(8)
        + b"\xa6values\x81\xa1\x00\xc7\x0c\x01\x93\xa3<f4\x90\xc4\x04\x00\x00"
        b"\x81\x7f\xa6errors\x80\xa1v\x01\xa3run\xa10\xa3seq\x00"
    ]
)
def test_any_bytes_are_stored_or_rejected_with_a_reason(messages):
    check_stream(messages)


@pytest.mark.slow
@settings(
    max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.lists(wire_bytes, max_size=20))
def test_any_bytes_are_stored_or_rejected_with_a_reason_long(messages):
    check_stream(messages)
