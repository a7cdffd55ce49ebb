"""Spill files: every complete record survives a crash mid-write or local damage."""

from __future__ import annotations

import os
import random

import pytest

from glasscockpit.agent.transport.spill import (
    FILE_MAGIC,
    HEADER_SIZE,
    SpillWriter,
    iter_records,
    scan,
)
from glasscockpit.protocol import Array, Hello, Readings, decode, encode


def _frames(n: int) -> list[bytes]:
    rng = random.Random(7)
    out = [encode(Hello(run="spill-run", seq=0, instruments=(), meta={"a": 1}))]
    for seq in range(1, n + 1):
        # Varying sizes, including raw array bytes that may contain the marker.
        k = rng.randrange(0, 40)
        arr = Array("|u1", (k,), bytes(rng.randrange(256) for _ in range(k)))
        values = {"loss": rng.random(), "hist": arr}
        out.append(encode(Readings("spill-run", seq, seq - 1, 1.0 * seq, values)))
    return out


def _write(path, payloads):
    writer = SpillWriter(path)
    offsets = [writer.append(p) for p in payloads]
    writer.close()
    return offsets


def test_records_read_back_in_order(tmp_path):
    path = tmp_path / "run.gcp"
    payloads = _frames(30)
    offsets = _write(path, payloads)
    records = list(iter_records(path))
    assert [r.payload for r in records] == payloads
    assert [r.offset for r in records] == offsets
    assert [decode(r.payload).seq for r in records] == list(range(31))
    report = scan(path)
    assert (report.records, report.torn_tail, report.skipped_bytes) == (31, 0, 0)
    assert report.valid_end == path.stat().st_size


def test_truncation_at_any_offset_keeps_every_complete_record(tmp_path):
    path = tmp_path / "run.gcp"
    payloads = _frames(40)
    offsets = _write(path, payloads)
    full = path.read_bytes()
    ends = [o + HEADER_SIZE + len(p) for o, p in zip(offsets, payloads, strict=True)]
    rng = random.Random(0)
    cuts = {0, 1, len(FILE_MAGIC), len(full) - 1, len(full)}
    cuts |= {rng.randrange(len(full) + 1) for _ in range(150)}
    cuts |= {e + d for e in ends[:5] for d in (-1, 0, 1)}
    for cut in sorted(cuts):
        cut_path = tmp_path / f"cut-{cut}.gcp"
        cut_path.write_bytes(full[:cut])
        complete = sum(1 for e in ends if e <= cut)
        got = [r.payload for r in iter_records(cut_path)]
        assert got == payloads[:complete], f"cut at byte {cut}"
        report = scan(cut_path)
        if complete:
            last_end = ends[complete - 1]
        else:  # a cut inside the magic counts as a torn tail of the whole file
            last_end = len(FILE_MAGIC) if cut >= len(FILE_MAGIC) else 0
        assert report.torn_tail == cut - last_end, f"cut at byte {cut}"
        assert report.skipped_bytes == 0


def test_damaged_record_in_the_middle_hides_nothing_else(tmp_path):
    path = tmp_path / "run.gcp"
    payloads = _frames(20)
    offsets = _write(path, payloads)
    data = bytearray(path.read_bytes())
    # Corrupt record 7's payload and record 12's length field.
    data[offsets[7] + HEADER_SIZE + 3] ^= 0xFF
    data[offsets[12] + 2 : offsets[12] + 6] = (2**30).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    got = [r.payload for r in iter_records(path)]
    assert got == [p for i, p in enumerate(payloads) if i not in (7, 12)]
    report = scan(path)
    assert report.skipped_bytes == (
        HEADER_SIZE + len(payloads[7]) + HEADER_SIZE + len(payloads[12])
    )


def test_reopening_a_torn_file_cuts_the_tail_then_appends(tmp_path):
    path = tmp_path / "run.gcp"
    payloads = _frames(10)
    offsets = _write(path, payloads)
    os.truncate(path, offsets[9] + 5)  # killed while writing record 9
    more = _frames(12)[10:]
    _write(path, more)
    got = [r.payload for r in iter_records(path)]
    assert got == payloads[:9] + more
    assert scan(path).torn_tail == 0


def test_not_a_spill_file(tmp_path):
    path = tmp_path / "other.gcp"
    path.write_bytes(b"PK\x03\x04 something else entirely")
    with pytest.raises(ValueError, match="not a glasscockpit spill file"):
        list(iter_records(path))
