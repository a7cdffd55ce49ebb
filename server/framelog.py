"""Append-only raw frame logs, one file per run, replayed at start-up.

Each record is ``<u32 length><u32 crc32><frame bytes>`` (little-endian). A frame
is acknowledged only once its whole record is in the log: written to the kernel's
page cache by default (survives the server process dying), and with
``GLASSCOCKPIT_FSYNC=true`` also synced to the disk (survives power loss). The sync
is a group commit: the ingest route calls ``sync`` from a worker thread before it
sends an ack, and one ``fsync`` covers every frame written since the last one, so
the event loop never waits on the disk and a backlog costs one sync, not one a
frame.

A write that fails (disk full, quota, file size limit, I/O error) is rolled back:
the file is truncated to its previous end, so no torn record is left for later
records to hide behind, and ``append`` raises ``LogWriteError``. The store turns
that into a refusal the agent retries (close code 1013), so the agent keeps the
frame (outbox, spill file) until the disk has room again. If even the truncation
fails, the run's log refuses every append until a later one manages to truncate.

A crash in the middle of a write leaves a torn last record: its length or checksum
does not match, so reading stops there and the file is truncated to its last whole
record.

The file of run ``r`` is ``<data_dir>/r.frames``; run ids are checked by
``check_run_id`` (letters, digits, ``.``, ``_``, ``-``; no ``..``), so they cannot
name anything outside ``data_dir``.

Size caps (``GLASSCOCKPIT_MAX_LOG_BYTES_PER_RUN``, ``GLASSCOCKPIT_MAX_LOG_BYTES``;
off by default). The logs are what makes an ack a promise that survives a restart,
so a frame that would push a log past a cap is **refused, not acknowledged**
(``RunStore.ingest`` raises ``Rejected("log_full")`` before storing anything): the
agent keeps it (outbox, spill file) and nothing it holds as acknowledged is lost.
The run's frames up to the cap stay stored and served. A full run is closed with
1008 (resending cannot help: ``glasscockpit sync`` its spill file to a server with
a larger cap); a full data dir with 1013, so the agent retries and gets in once a
run is deleted or evicted. Bye frames are exempt (a few bytes each), so a run can
still be marked finished. Refusals count as ``rejected.log_full`` on /v1/metrics,
next to ``log_bytes``.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from glasscockpit.protocol import check_run_id

log = logging.getLogger("glasscockpit.server")
HEADER = struct.Struct("<II")
SUFFIX = ".frames"


class LogWriteError(OSError):
    """A frame could not be appended (and was rolled back); ``full``: no space."""

    def __init__(self, message: str, full: bool) -> None:
        super().__init__(message)
        self.full = full


#: errnos that mean "no room", as opposed to a failing disk.
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def record(data: bytes) -> bytes:
    """One log record: header and frame bytes."""
    return HEADER.pack(len(data), zlib.crc32(data)) + data


def read_records(path: Path) -> tuple[list[bytes], int]:
    """Every whole record of a log file and the byte offset where they end."""
    blob = path.read_bytes()
    out: list[bytes] = []
    pos = 0
    while pos + HEADER.size <= len(blob):
        size, crc = HEADER.unpack_from(blob, pos)
        start = pos + HEADER.size
        data = blob[start : start + size]
        if len(data) != size or zlib.crc32(data) != crc:
            break  # torn or corrupt tail: nothing after it can be trusted
        out.append(data)
        pos = start + size
    return out, pos


class FrameLogs:
    """The frame logs under one folder."""

    def __init__(
        self,
        root: Path,
        fsync: bool = False,
        max_run_bytes: int | None = None,
        max_total_bytes: int | None = None,
    ) -> None:
        self.root = root
        self.fsync = fsync
        self.max_run_bytes = max_run_bytes
        self.max_total_bytes = max_total_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, BinaryIO] = {}
        self._dirty: set[str] = set()  # appended to since their last sync
        self._torn: set[str] = set()  # a rollback failed: truncate before appending
        self._unsynced_dir = False
        # Bytes of each log and of all of them, kept current by every write.
        self._sizes = {p.name[: -len(SUFFIX)]: p.stat().st_size for p in self._logs()}
        self.total = sum(self._sizes.values())

    def _logs(self) -> list[Path]:
        return list(self.root.glob(f"*{SUFFIX}"))

    def full(
        self, run_id: str, nbytes: int, fresh: bool = False
    ) -> tuple[str, bool] | None:
        """Why appending a frame of ``nbytes`` would break a cap, or None.

        Returns the reason and whether it is the run's own cap (True) or the cap
        on all logs (False). ``fresh``: the run is new, so an old file of that id
        will be replaced.
        """
        size = HEADER.size + nbytes
        old = self._sizes.get(run_id, 0)
        held = 0 if fresh else old
        cap = self.max_run_bytes
        if cap is not None and held + size > cap:
            return (
                f"Run {run_id!r} has {held} bytes of frame log; this frame would "
                f"exceed GLASSCOCKPIT_MAX_LOG_BYTES_PER_RUN={cap}",
                True,
            )
        cap = self.max_total_bytes
        if cap is not None and self.total - old + held + size > cap:
            return (
                f"The frame logs hold {self.total} bytes; this frame would exceed "
                f"GLASSCOCKPIT_MAX_LOG_BYTES={cap}",
                False,
            )
        return None

    def path(self, run_id: str) -> Path:
        """The log file of a run (the id is validated first)."""
        return self.root / f"{check_run_id(run_id)}{SUFFIX}"

    def append(self, run_id: str, data: bytes) -> None:
        """Append one frame; returns once the whole record is handed to the kernel.

        Raises ``LogWriteError`` after rolling the file back to its previous end.
        """
        end = self._sizes.get(run_id, 0)
        try:
            f = self._files.get(run_id)
            if f is None:
                f = open(self.path(run_id), "ab", buffering=0)  # noqa: SIM115 - kept open across frames
                self._files[run_id] = f
                self._unsynced_dir = True
            if run_id in self._torn:
                os.ftruncate(f.fileno(), end)  # an earlier rollback failed
                self._torn.discard(run_id)
            view = memoryview(record(data))
            while view:
                # An unbuffered write may write part of the record (a disk filling
                # up does): write the rest, or fail and roll back.
                n = f.write(view)
                if not n:
                    raise OSError(errno.EIO, "the write made no progress")
                view = view[n:]
        except OSError as exc:
            self._roll_back(run_id, end)
            raise LogWriteError(
                f"Cannot append to the frame log of run {run_id!r}: {exc}",
                exc.errno in NO_ROOM,
            ) from exc
        self._dirty.add(run_id)
        self._sizes[run_id] = end + HEADER.size + len(data)
        self.total += HEADER.size + len(data)

    def _roll_back(self, run_id: str, end: int) -> None:
        f = self._files.get(run_id)
        try:
            if f is None:
                raise OSError(errno.EBADF, "the log file could not be opened")
            os.ftruncate(f.fileno(), end)
        except OSError as exc:
            self._torn.add(run_id)
            log.error(
                "glasscockpit: cannot roll back the frame log of %r to %d bytes: %s; "
                "it refuses frames until it can",
                run_id,
                end,
                exc,
            )

    def sync(self, run_id: str) -> None:
        """Sync a run's log to disk (group commit; called off the event loop).

        Covers every frame appended before the call. Raises ``OSError``.
        """
        if run_id not in self._dirty:
            return
        f = self._files.get(run_id)
        self._dirty.discard(run_id)
        if f is None:
            return  # deleted meanwhile
        try:
            fileno = f.fileno()
        except ValueError:
            return  # closed meanwhile (run deleted): nothing left to make durable
        try:
            os.fsync(fileno)
            if self._unsynced_dir:
                self._unsynced_dir = False
                fd = os.open(self.root, os.O_RDONLY)
                try:
                    os.fsync(fd)  # new files' directory entries
                finally:
                    os.close(fd)
        except OSError:
            self._dirty.add(run_id)
            raise

    def close(self, run_id: str | None = None) -> None:
        """Close one run's file (or all of them)."""
        ids = [run_id] if run_id is not None else list(self._files)
        for rid in ids:
            f = self._files.pop(rid, None)
            if f is not None:
                f.close()

    def delete(self, run_id: str) -> None:
        """Remove a run's log."""
        self.close(run_id)
        self.path(run_id).unlink(missing_ok=True)
        self.total -= self._sizes.pop(run_id, 0)

    def run_ids(self) -> list[str]:
        """Runs with a log, oldest modification first (the order to replay in)."""
        files = sorted(self._logs(), key=lambda p: p.stat().st_mtime)
        return [p.name[: -len(SUFFIX)] for p in files]

    def load(self, run_id: str) -> tuple[list[bytes], int]:
        """The frames of a run's log and the bytes of a torn tail, which is cut off."""
        path = self.path(run_id)
        frames, end = read_records(path)
        size = path.stat().st_size
        if end < size:
            log.warning(
                "glasscockpit: %s: skipped a torn or corrupt tail of %d bytes "
                "after %d whole frames",
                path,
                size - end,
                len(frames),
            )
            with open(path, "r+b") as f:
                f.truncate(end)
            self.total -= self._sizes.get(run_id, size) - end
            self._sizes[run_id] = end
        return frames, size - end

    def snapshot(self, run_id: str, chunk: int = 2**16) -> Iterator[bytes]:
        """The log's bytes as they are now (a live run keeps appending)."""
        path = self.path(run_id)
        size = path.stat().st_size
        with open(path, "rb") as f:
            left = size
            while left > 0:
                data = f.read(min(chunk, left))
                if not data:
                    break
                left -= len(data)
                yield data
