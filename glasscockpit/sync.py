"""``glasscockpit sync``: upload spill files and recordings to a server, once.

A file holds encoded frames of one or more runs (``agent/transport/spill.py``).
For each run
the upload sends the hello frame, reads the server's acknowledgement of it (the
highest ``seq`` it already holds for the run), then sends the remaining frames in
``seq`` order and waits for their cumulative acks. The server inserts by
``(run, seq)`` and ignores frames it holds, so syncing a file twice, or a file
whose frames partly arrived live, adds nothing twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from glasscockpit.agent.lifecycle.config import ingest_url
from glasscockpit.agent.transport.spill import ScanReport, iter_records
from glasscockpit.agent.transport.websocket import describe_error, is_fatal
from glasscockpit.protocol import Ack, Hello, ProtocolError, decode

log = logging.getLogger("glasscockpit.sync")

#: Frames in flight before waiting for acks.
WINDOW = 512


class SyncError(RuntimeError):
    """A run could not be uploaded (server unreachable, rejected, no ack)."""


@dataclass
class RunFrames:
    """One run's frames found in the files: its hello, and where each frame is.

    Frames are located by (file, record offset) and read again when sent, so a
    large file is never held in memory whole.
    """

    run: str
    hello: bytes | None = None
    hello_seq: int = -1
    frames: dict[int, tuple[Path, int]] = field(default_factory=dict)

    def payload(self, seq: int) -> bytes:
        """The encoded frame ``seq``, read back from its file."""
        path, offset = self.frames[seq]
        for record in iter_records(path, offset):
            if record.offset == offset:
                return record.payload
            break
        raise SyncError(f"{path}: the record at offset {offset} can no longer be read")


@dataclass
class FileReport:
    """What reading one file found."""

    path: Path
    scan: ScanReport
    undecodable: int = 0


@dataclass
class RunResult:
    """Outcome of uploading one run."""

    run: str
    frames: int
    uploaded: int = 0
    already_held: int = 0
    error: str = ""
    #: The id the server stores the run under: ``run`` with a suffix when that
    #: id belongs to another run (a reused id; see server/store.py).
    stored_as: str = ""


def read_files(
    paths: Iterable[str | Path],
) -> tuple[dict[str, RunFrames], list[FileReport]]:
    """Collect every intact frame of the files, grouped by run, deduplicated by seq.

    Raises:
        ValueError: a file is not a spill or recording file.
        OSError: a file cannot be read.
    """
    runs: dict[str, RunFrames] = {}
    reports: list[FileReport] = []
    for raw_path in paths:
        path = Path(raw_path)
        report = FileReport(path, ScanReport())
        for record in iter_records(path, report=report.scan):
            try:
                frame = decode(record.payload)
            except ProtocolError:
                report.undecodable += 1
                continue
            if isinstance(frame, Ack):
                report.undecodable += 1
                continue
            entry = runs.setdefault(frame.run, RunFrames(frame.run))
            if isinstance(frame, Hello):
                if frame.seq >= entry.hello_seq:
                    entry.hello, entry.hello_seq = record.payload, frame.seq
            else:
                entry.frames.setdefault(frame.seq, (path, record.offset))
        reports.append(report)
    return runs, reports


def _recv(ws: ClientConnection, timeout: float) -> Ack | None:
    try:
        raw = ws.recv(timeout=timeout)
    except TimeoutError:
        return None
    msg = decode(raw if isinstance(raw, bytes) else raw.encode())
    if not isinstance(msg, Ack):
        raise SyncError(f"expected an ack from the server, got {type(msg).__name__}")
    return msg


def _recv_ack(ws: ClientConnection, timeout: float) -> int | None:
    msg = _recv(ws, timeout)
    return None if msg is None else msg.seq


def _first_ack(ws: ClientConnection, timeout: float) -> Ack:
    """The hello's ack: what the server holds, and under which run id."""
    msg = _recv(ws, timeout)
    if msg is None:
        raise SyncError(f"the server sent no acknowledgement for {timeout:g} s")
    return msg


def upload_run(
    url: str,
    run: RunFrames,
    token: str | None = None,
    progress: Any = None,
    ack_timeout: float = 30.0,
) -> RunResult:
    """Send one run's frames that the server does not hold yet; wait for the acks.

    Args:
        url: the ingest URL (``ws://host:port/v1/agent``).
        run: the run's hello and frames.
        token: bearer token, if the server requires one.
        progress: a tqdm bar (or None), advanced once per frame.
        ack_timeout: seconds without any ack before giving up.

    Raises:
        SyncError: the run has no hello frame, the server rejected the upload or
            stopped acknowledging.
    """
    result = RunResult(run.run, len(run.frames))
    if run.hello is None:
        raise SyncError(
            f"run {run.run!r} has no hello frame in these files; it cannot be created"
        )
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        with connect(
            url,
            additional_headers=headers,
            compression=None,
            open_timeout=10,
            close_timeout=2,
            max_size=2**20,
            max_queue=None,
        ) as ws:
            ws.send(run.hello)
            first = _first_ack(ws, ack_timeout)
            result.stored_as = first.run
            held = first.seq
            todo = sorted(seq for seq in run.frames if seq > held)
            result.already_held = len(run.frames) - len(todo)
            if progress is not None and result.already_held:
                progress.update(result.already_held)
            acked = held
            sent = 0
            while sent < len(todo) or (todo and acked < todo[-1]):
                while sent < len(todo) and sent - _acked_count(todo, acked) < WINDOW:
                    ws.send(run.payload(todo[sent]))
                    sent += 1
                before = _acked_count(todo, acked)
                acked = max(acked, _wait_ack(ws, acked, ack_timeout))
                done = _acked_count(todo, acked)
                if progress is not None and done > before:
                    progress.update(done - before)
            result.uploaded = len(todo)
    except SyncError:
        raise
    except Exception as exc:  # noqa: BLE001 - report every failure the same way
        hint = " (not retried: wrong token or protocol?)" if is_fatal(exc) else ""
        raise SyncError(f"{describe_error(exc)}{hint}") from exc
    return result


def _acked_count(todo: Sequence[int], acked: int) -> int:
    """How many of the sorted seqs in ``todo`` are <= ``acked``."""
    lo, hi = 0, len(todo)
    while lo < hi:
        mid = (lo + hi) // 2
        if todo[mid] <= acked:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _wait_ack(ws: ClientConnection, acked: int | None, timeout: float) -> int:
    """The next ack's seq, reading every ack already queued; raise on silence."""
    deadline = time.monotonic() + timeout
    best: int | None = None
    while best is None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise SyncError(f"the server sent no acknowledgement for {timeout:g} s")
        best = _recv_ack(ws, left)
    while (more := _recv_ack(ws, 0)) is not None:
        best = max(best, more)
    return best if acked is None else max(acked, best)


def sync_files(
    paths: Sequence[str | Path],
    server: str,
    token: str | None = None,
    progress: bool = True,
) -> list[RunResult]:
    """Upload every run found in ``paths`` to ``server``; one result per run.

    Errors of one run are recorded in its result and do not stop the others.

    Raises:
        ValueError: a file is not a spill or recording file, or the URL is bad.
        OSError: a file cannot be read.
    """
    url = ingest_url(server)
    runs, reports = read_files(paths)
    for report in reports:
        if report.scan.torn_tail:
            log.warning(
                "%s: ignored an incomplete last record of %d bytes (the writer was "
                "stopped mid-write)",
                report.path,
                report.scan.torn_tail,
            )
        if report.scan.skipped_bytes or report.undecodable:
            log.warning(
                "%s: skipped %d damaged bytes and %d undecodable records",
                report.path,
                report.scan.skipped_bytes,
                report.undecodable,
            )
    total = sum(len(r.frames) for r in runs.values())
    from tqdm import tqdm

    results: list[RunResult] = []
    with tqdm(
        total=total, unit="frame", desc="glasscockpit sync", disable=not progress
    ) as bar:
        for run in runs.values():
            try:
                results.append(upload_run(url, run, token=token, progress=bar))
            except SyncError as exc:
                results.append(RunResult(run.run, len(run.frames), error=str(exc)))
    return results
