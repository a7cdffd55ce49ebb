r"""Spill and recording files: append-only, length-prefixed, checksummed frames.

Layout::

    b"GCSPILL1"                        file magic (8 bytes)
    record*                            one per frame, in the order written

    record = b"\xc5\x9c" | u32 length | u32 crc32(payload) | payload

Integers are little-endian; ``payload`` is one frame exactly as it travels on the
wire (``glasscockpit.protocol.encode``). Each record is written with a single
``os.write`` on an ``O_APPEND`` descriptor, so a process killed mid-write leaves
at most one torn record at the end of the file. The reader stops at a torn tail
and, for damage in the middle (which a crash cannot cause, but a disk can), skips
forward to the next record whose marker, length and checksum are all valid, so
one bad record never hides the ones after it.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FILE_MAGIC = b"GCSPILL1"
RECORD_MARK = b"\xc5\x9c"
_HEADER = struct.Struct("<2sII")
HEADER_SIZE = _HEADER.size
#: Larger "records" are damage: frames are limited to a few MiB on the wire.
MAX_RECORD = 64 * 2**20
_CHUNK = 1 << 20


def pack_record(payload: bytes) -> bytes:
    """One record: marker, length, CRC-32 and the payload."""
    return _HEADER.pack(RECORD_MARK, len(payload), zlib.crc32(payload)) + payload


@dataclass(frozen=True)
class Record:
    """One intact record read back: where it starts and the frame bytes."""

    offset: int
    payload: bytes

    @property
    def end(self) -> int:
        """Offset just past this record."""
        return self.offset + HEADER_SIZE + len(self.payload)


@dataclass
class ScanReport:
    """What a full read of a file found besides intact records."""

    records: int = 0
    skipped_bytes: int = 0  # damaged bytes in the middle that were jumped over
    torn_tail: int = 0  # bytes of an incomplete last record (a crash mid-write)
    valid_end: int = 0  # offset just past the last intact record


def _read_head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(len(FILE_MAGIC))


def iter_records(
    path: str | Path,
    start: int | None = None,
    stop: int | None = None,
    report: ScanReport | None = None,
) -> Iterator[Record]:
    """Yield the intact records of ``path`` between offsets ``start`` and ``stop``.

    The file is memory-mapped, so a large file is not read into memory at once.

    Args:
        path: a spill or recording file.
        start: offset of a record to begin at (default: just after the file magic).
        stop: read no further than this offset (default: end of file).
        report: filled with counts of damaged and torn bytes, if given.

    Raises:
        ValueError: the file does not start with the spill-file magic.
    """
    path = Path(path)
    report = report if report is not None else ScanReport()
    if start is None:
        head = _read_head(path)
        if head != FILE_MAGIC:
            if FILE_MAGIC.startswith(head):  # a crash while writing the magic
                report.torn_tail = len(head)
                return
            raise ValueError(f"{path} is not a glasscockpit spill file")
        start = len(FILE_MAGIC)
    report.valid_end = start
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        end = size if stop is None else min(stop, size)
        if end <= start:
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            yield from _parse(data, start, end, report)


def _parse(data: mmap.mmap, pos: int, n: int, report: ScanReport) -> Iterator[Record]:
    """Records in ``data[pos:n]``; offsets are absolute."""
    while pos < n:
        if n - pos < HEADER_SIZE:
            report.torn_tail = n - pos
            return
        mark, length, crc = _HEADER.unpack_from(data, pos)
        body_end = pos + HEADER_SIZE + length
        if mark == RECORD_MARK and length <= MAX_RECORD and body_end <= n:
            payload = data[pos + HEADER_SIZE : body_end]
            if zlib.crc32(payload) == crc:
                report.records += 1
                report.valid_end = body_end
                yield Record(pos, payload)
                pos = body_end
                continue
        if mark == RECORD_MARK and length <= MAX_RECORD and body_end > n:
            # Plausible header whose body runs past the end: either a torn tail or
            # damage; only a later intact record can tell which.
            nxt = _find_next(data, pos + 1, n)
            if nxt < 0:
                report.torn_tail = n - pos
                return
            report.skipped_bytes += nxt - pos
            pos = nxt
            continue
        nxt = _find_next(data, pos + 1, n)
        if nxt < 0:
            report.skipped_bytes += n - pos
            return
        report.skipped_bytes += nxt - pos
        pos = nxt


def _find_next(data: mmap.mmap, pos: int, n: int) -> int:
    """Offset of the next intact record in ``data[pos:n]``, or -1."""
    while True:
        pos = data.find(RECORD_MARK, pos, n)
        if pos < 0 or n - pos < HEADER_SIZE:
            return -1
        _, length, crc = _HEADER.unpack_from(data, pos)
        end = pos + HEADER_SIZE + length
        if (
            length <= MAX_RECORD
            and end <= n
            and zlib.crc32(data[pos + HEADER_SIZE : end]) == crc
        ):
            return pos
        pos += 1


def scan(path: str | Path) -> ScanReport:
    """Read a whole file and report what it holds (records, damage, torn tail)."""
    report = ScanReport()
    for _ in iter_records(path, report=report):
        pass
    return report


class SpillWriter:
    """Appends records to one file; not thread-safe (the caller holds a lock).

    Opening an existing file first cuts off a torn last record, so records
    appended later are never hidden behind a half-written one.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        size = 0
        if self.path.exists() and self.path.stat().st_size > 0:
            report = scan(self.path)
            if report.torn_tail:
                os.truncate(self.path, report.valid_end)
            size = self.path.stat().st_size
        self._fd = os.open(
            self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | _O_BINARY, 0o644
        )
        if size == 0:
            self._write(FILE_MAGIC)
            size = len(FILE_MAGIC)
        self.size = size

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def append(self, payload: bytes) -> int:
        """Append one frame; returns the record's offset."""
        offset = self.size
        record = pack_record(payload)
        try:
            self._write(record)
        except OSError:
            # Cut a partial record off so later appends stay readable.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, offset)
            raise
        self.size = offset + len(record)
        return offset

    def close(self, sync: bool = True) -> None:
        """Flush to disk (``fsync``, optional) and close; safe to call twice."""
        if self._fd < 0:
            return
        try:
            if sync:
                os.fsync(self._fd)
        finally:
            os.close(self._fd)
            self._fd = -1


_O_BINARY: int = getattr(os, "O_BINARY", 0)


def read_frames_bytes(path: str | Path) -> Iterator[bytes]:
    """Payloads of every intact record in a file, in file order."""
    for record in iter_records(path):
        yield record.payload


__all__ = [
    "FILE_MAGIC",
    "HEADER_SIZE",
    "Record",
    "ScanReport",
    "SpillWriter",
    "iter_records",
    "pack_record",
    "read_frames_bytes",
    "scan",
]
