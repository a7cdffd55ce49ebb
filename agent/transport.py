"""Frame delivery off the training thread: bounded, acked, reconnecting, spilling.

Three parties, so that neither a slow GPU copy nor a stuck socket can reach the
training loop:

* the **training thread** only calls ``send``: an append to a bounded hand-off
  deque (when it is full the frame is dropped and counted, never waited for);
* the **packer thread** waits for a frame's device→host copy (a CUDA event on
  GPUs), encodes it and places it: in the in-memory outbox while the server is
  reachable and memory is within budget, otherwise appended to the spill file
  (``agent/spill.py``); with ``record=path`` every frame also goes to that file;
* the **sender thread** owns the websocket: it sends the hello frame, learns from
  the server's acknowledgement of it which frames the server already holds,
  resends what the server lacks (unacknowledged frames, and acknowledged ones a
  restarted in-memory server has lost, from a bounded history), then streams the
  outbox and the spill backlog in sequence order and reads cumulative acks.

Frames reach the server in increasing ``seq`` order on every connection, because
the server stores a frame only if its ``seq`` is above the last one stored. Once a
frame is spilled, newer frames follow it to disk until the backlog is read back,
so memory and disk never interleave out of order.

Nothing here raises into the training loop: failures change ``stats.state`` and
log one warning per state change.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Protocol, runtime_checkable

from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from glasscockpit.agent.spill import (
    HEADER_SIZE,
    MAX_RECORD,
    SpillWriter,
    iter_records,
)
from glasscockpit.protocol import (
    Ack,
    Bye,
    Frame,
    Hello,
    ProtocolError,
    Readings,
    decode,
    encode,
)

log = logging.getLogger("glasscockpit.agent")

#: Close codes after which reconnecting cannot help (policy, version, too big).
FATAL_CLOSE_CODES = frozenset({1002, 1003, 1007, 1008, 1009, 4001, 4003})
FATAL_HTTP_STATUS = frozenset({400, 401, 403, 404})

#: Connection states, as shown by ``stats.state``.
STATES = (
    "connecting",  # first connection attempt in progress
    "live",  # connected, frames flow and are acknowledged
    "offline",  # never reached the server yet; frames go to the spill file
    "reconnecting",  # was live, lost the connection; frames go to the spill file
    "rejected",  # the server refused us (token, protocol): no more retries
    "recording",  # no server: frames only go to the recording file
    "closed",  # close() returned
)


@dataclass
class TransportStats:
    """Delivery counters, updated by the transport's threads.

    Attributes:
        sent: frames written to the websocket for the first time.
        acked: frames the server acknowledged as stored.
        resent: frames sent again after a reconnect (unacknowledged ones, and
            acknowledged ones a restarted server no longer had).
        spilled: frames written to the spill file because they could not be sent
            or kept in memory at that moment.
        recorded: frames written to the ``record=`` file.
        dropped: frames lost for good (hand-off queue full, disk budget exhausted,
            a frame over the size limit, a failed device copy).
        reconnects: connection attempts after the first one.
        state: one of ``STATES``.
        last_error: the most recent connection error, for humans.
        pending: frames not yet acknowledged (in memory or in the spill backlog).
        spill_path: the spill or recording file, once one exists.
    """

    sent: int = 0
    acked: int = 0
    resent: int = 0
    spilled: int = 0
    recorded: int = 0
    dropped: int = 0
    reconnects: int = 0
    state: str = "connecting"
    last_error: str = ""
    pending: int = 0
    spill_path: str | None = None


@runtime_checkable
class Deferred(Protocol):
    """A frame whose device→host copy may still be in flight (see packing.py)."""

    seq: int

    def resolve(self) -> Frame:
        """Wait for the copy and build the frame; call off the training thread."""


Item = Hello | Readings | Bye | Deferred


def resolve(item: Item) -> Frame:
    """The frame of a hand-off item, waiting for its device copy if needed."""
    if isinstance(item, Hello | Readings | Bye):
        return item
    return item.resolve()


class Transport(Protocol):
    """Where the agent's frames go."""

    stats: TransportStats

    def send(self, frame: Item) -> None:
        """Hand over one frame; never blocks, never raises."""

    def close(self, timeout: float) -> None:
        """Deliver what is pending for at most ``timeout`` seconds, then stop."""


class MemoryTransport:
    """Keeps frames in a list (``server=None`` and tests); can also record them."""

    def __init__(
        self, hello: Hello | None = None, record: str | os.PathLike[str] | None = None
    ):
        self._items: list[Item] = []
        self.stats = TransportStats(state="offline")
        self._recorder: WebSocketTransport | None = None
        if record is not None and hello is not None:
            self._recorder = WebSocketTransport(None, hello, record=record)
            self.stats = self._recorder.stats

    @property
    def frames(self) -> list[Frame]:
        """Every frame sent so far (waits for pending device copies)."""
        self._items = [resolve(i) for i in self._items]
        return list(self._items)  # type: ignore[arg-type]

    def send(self, frame: Item) -> None:
        """Append the frame (and hand it to the recorder)."""
        self._items.append(frame)
        if self._recorder is not None:
            if not isinstance(frame, Hello):  # the recorder writes its own hello
                self._recorder.send(frame)
        else:
            self.stats.sent += 1

    def close(self, timeout: float) -> None:
        """Finish the recording, if any."""
        if self._recorder is not None:
            self._recorder.close(timeout)


def is_fatal(exc: BaseException) -> bool:
    """Whether an error means "stop retrying" (wrong token, wrong protocol)."""
    if isinstance(exc, InvalidStatus):
        return exc.response.status_code in FATAL_HTTP_STATUS
    rcvd = getattr(exc, "rcvd", None)
    return rcvd is not None and rcvd.code in FATAL_CLOSE_CODES


def describe_error(exc: BaseException) -> str:
    """A short, human description of a connection failure."""
    if isinstance(exc, InvalidStatus):
        code = exc.response.status_code
        hint = " (wrong or missing token?)" if code in (401, 403) else ""
        return f"HTTP {code}{hint}"
    rcvd = getattr(exc, "rcvd", None)
    if rcvd is not None:
        return f"closed by server with code {rcvd.code} {rcvd.reason!r}".strip()
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text


@dataclass(frozen=True)
class TransportOptions:
    """Budgets and timings of ``WebSocketTransport`` (defaults suit most runs).

    Attributes:
        max_queue: hand-off slots between the training thread and the packer.
        max_memory_frames: frames held in memory (outbox + unacknowledged) before
            new ones are spilled to disk.
        max_memory_bytes: the same budget in encoded bytes.
        max_inflight: frames sent but not yet acknowledged (flow control).
        history_bytes: acknowledged frames kept to resend to a restarted server.
        spill_max_bytes: disk budget of the spill or recording file.
        max_frame_bytes: larger frames are dropped (the server would refuse them).
        backoff: first and largest reconnect delay in seconds (jittered, doubled).
        pack_interval: how often the packer looks for new frames, in seconds; the
            training thread never wakes it, so this bounds the added latency.
        open_timeout: seconds to open a connection and get the hello acknowledged.
    """

    max_queue: int = 1024
    max_memory_frames: int = 10_000
    max_memory_bytes: int = 64 * 2**20
    max_inflight: int = 1000
    history_bytes: int = 16 * 2**20
    spill_max_bytes: int = 2**30
    max_frame_bytes: int = 8 * 2**20
    backoff: tuple[float, float] = (0.2, 10.0)
    pack_interval: float = 0.01
    open_timeout: float = 5.0


#: Bytes of the spill file read back per batch.
_SLICE = 2**20

# (seq, encoded frame, already written to the spill/record file)
_Entry = tuple[int, bytes, bool]


class WebSocketTransport:
    """Sends frames over a websocket from background threads; see module docs.

    Args:
        url: the ingest URL (``ws://host:port/v1/agent``), or None to only record.
        hello: the run's hello frame, sent first on every connection.
        token: bearer token for the server.
        record: write every frame to this file (a recording to ``sync`` later).
        spill_dir: folder of the spill file ``<run>.gcp`` (without ``record``).
        options: budgets and timings.
    """

    def __init__(
        self,
        url: str | None,
        hello: Hello,
        token: str | None = None,
        *,
        record: str | os.PathLike[str] | None = None,
        spill_dir: str | Path | None = None,
        options: TransportOptions | None = None,
    ) -> None:
        self.url = url
        self.hello = hello
        self.token = token
        self.options = options or TransportOptions()
        self.stats = TransportStats(state="connecting" if url else "recording")
        self._hello_bytes = encode(hello)
        self._record = record is not None
        if record is not None:
            self.spill_path: Path | None = Path(record)
        elif spill_dir is not None:
            self.spill_path = Path(spill_dir) / f"{hello.run}.gcp"
        else:
            self.spill_path = None
        self._handoff: deque[Item] = deque()
        self._handoff_ready = threading.Event()
        self._lock = threading.Condition()
        # Guarded by _lock: every frame not yet acknowledged is in exactly one of
        # unacked (sent), outbox (memory, unsent) or the backlog (disk, unsent),
        # and their seqs increase in that order.
        self._unacked: deque[_Entry] = deque()
        self._outbox: deque[_Entry] = deque()
        self._memory_bytes = 0
        self._history: deque[_Entry] = deque()
        self._history_bytes = 0
        self._acked_seq = 0
        self._last_seq = 0
        self._backlog_start = 0
        self._backlog_end = 0
        self._backlog_frames = 0
        self._writer: SpillWriter | None = None
        self._created_file = False
        self._disk_state = "ok"  # ok | full | failed
        self._drop_reasons: set[str] = set()
        # dropped is the one counter several threads write; this lock is never
        # held across I/O, so the training thread cannot wait on a disk write.
        self._count_lock = threading.Lock()
        self._ever_live = False
        self._closing = False
        self._closed = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._ws: ClientConnection | None = None
        if self._record:
            with self._lock:
                self._open_writer()
        self._packer = threading.Thread(
            target=self._pack_loop, name="glasscockpit-packer", daemon=True
        )
        self._packer.start()
        self._sender: threading.Thread | None = None
        if url is not None:
            self._sender = threading.Thread(
                target=self._send_loop, name="glasscockpit-sender", daemon=True
            )
            self._sender.start()

    # -- training thread ---------------------------------------------------------
    def send(self, frame: Item) -> None:
        """Queue one frame without blocking; a full hand-off drops it (counted)."""
        if self._closing:
            return
        # One producer (the training thread): the length can only shrink between
        # the check and the append, so the bound holds without a lock.
        if len(self._handoff) >= self.options.max_queue:
            self._drop(1, "the hand-off queue was full (packer thread stalled)")
            return
        # Usually no wake-up call: the packer polls every ``pack_interval`` seconds,
        # so a step costs one append and frames are packed in batches. Only a burst
        # that half fills the queue wakes it early.
        self._handoff.append(frame)
        if len(self._handoff) * 2 >= self.options.max_queue:
            self._handoff_ready.set()

    def close(self, timeout: float) -> None:
        """Deliver for at most ``timeout`` seconds; leave the rest in the spill file.

        Prints one line when frames were not delivered, naming the file that holds
        them and the ``glasscockpit sync`` command that uploads them.
        """
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._lock.notify_all()
        start = time.monotonic()
        deadline = start + max(0.0, timeout)
        self._handoff_ready.set()
        self._wake.set()
        self._packer.join(max(0.0, deadline - time.monotonic()))
        if self._sender is not None:
            self._sender.join(max(0.0, deadline - time.monotonic()))
        self._stop.set()
        self._wake.set()
        self._abort_socket()
        self._finish(time.monotonic() - start)

    @property
    def undelivered(self) -> int:
        """Frames queued or sent but not yet acknowledged."""
        with self._lock:
            return self._pending_locked() + len(self._handoff)

    # -- shared helpers (call with _lock held unless noted) -------------------
    def _pending_locked(self) -> int:
        return len(self._unacked) + len(self._outbox) + self._backlog_frames

    def _update_pending(self) -> None:
        self.stats.pending = self._pending_locked()

    def _drop(self, n: int, reason: str) -> None:
        """Count lost frames; warn once per reason (any thread, no lock needed)."""
        with self._count_lock:
            self.stats.dropped += n
            first = reason not in self._drop_reasons
            self._drop_reasons.add(reason)
        if first:
            log.warning(
                "glasscockpit: run %r is dropping frames: %s", self.hello.run, reason
            )

    def _open_writer(self) -> bool:
        if self._writer is not None:
            return True
        if self.spill_path is None or self._disk_state == "failed":
            return False
        try:
            existed = self.spill_path.exists()
            self._writer = SpillWriter(self.spill_path)
            self._created_file = not existed
            self._writer.append(self._hello_bytes)
        except OSError as exc:
            self._disk_state = "failed"
            log.warning(
                "glasscockpit: cannot write the spill file %s (%s); frames that "
                "cannot be sent will be dropped",
                self.spill_path,
                exc,
            )
            return False
        self.stats.spill_path = str(self.spill_path)
        return True

    def _disk_write(self, data: bytes) -> int | None:
        """Append one frame to the spill file; its offset, or None if it cannot."""
        if not self._open_writer():
            return None
        assert self._writer is not None
        if self._writer.size + HEADER_SIZE + len(data) > self.options.spill_max_bytes:
            if self._disk_state != "full":
                self._disk_state = "full"
                log.warning(
                    "glasscockpit: the spill file %s reached its budget of %d MiB",
                    self.spill_path,
                    self.options.spill_max_bytes // 2**20,
                )
            return None
        try:
            return self._writer.append(data)
        except OSError as exc:
            self._disk_state = "failed"
            log.warning(
                "glasscockpit: writing the spill file %s failed (%s)",
                self.spill_path,
                exc,
            )
            return None

    def _can_hold_in_memory(self) -> bool:
        o = self.options
        return (
            self._backlog_frames == 0
            and self.stats.state in ("connecting", "live")
            and len(self._outbox) + len(self._unacked) < o.max_memory_frames
            and self._memory_bytes < o.max_memory_bytes
        )

    def _place(self, seq: int, data: bytes) -> None:
        """Put one encoded frame in memory or in the spill backlog (lock held)."""
        self._last_seq = max(self._last_seq, seq)
        offset = None
        if self._record:
            offset = self._disk_write(data)
            if offset is not None:
                self.stats.recorded += 1
        if self.url is None:
            if offset is None:
                self._drop(1, "the recording file cannot be written")
            return
        if self._can_hold_in_memory():
            self._outbox.append((seq, data, offset is not None))
            self._memory_bytes += len(data)
        else:
            if not self._record:
                offset = self._disk_write(data)
            if offset is None:
                self._drop(
                    1,
                    "they can be neither sent nor kept in memory, and the spill "
                    "file is full or cannot be written",
                )
                return
            if self._backlog_frames == 0:
                self._backlog_start = offset
            self._backlog_end = offset + HEADER_SIZE + len(data)
            self._backlog_frames += 1
            self.stats.spilled += 1
        self._update_pending()

    # -- packer thread -----------------------------------------------------------
    def _pack_loop(self) -> None:
        while True:
            if not self._handoff:
                if self._closing or self._stop.is_set():
                    return
                self._handoff_ready.wait(self.options.pack_interval)
                self._handoff_ready.clear()
                continue
            packed: list[tuple[int, bytes]] = []
            while self._handoff and len(packed) < 256:
                item = self._handoff.popleft()
                try:
                    frame = resolve(item)
                    data = encode(frame)
                except Exception as exc:  # noqa: BLE001 - a bad frame must not stop us
                    self._drop(1, f"a frame could not be read or encoded ({exc})")
                    continue
                if len(data) > self.options.max_frame_bytes:
                    limit = self.options.max_frame_bytes
                    self._drop(1, f"a frame is larger than {limit} bytes")
                    continue
                packed.append((frame.seq, data))
            with self._lock:
                for seq, data in packed:
                    if self._stop.is_set():
                        self._drop(1, "close() timed out before it was packed")
                    else:
                        self._place(seq, data)
                self._lock.notify_all()

    # -- sender thread -----------------------------------------------------------
    def _set_state(self, state: str, error: str = "") -> None:
        prev = self.stats.state
        if error:
            self.stats.last_error = error
        if state == prev:
            return
        self.stats.state = state
        where = self.spill_path or "memory (no spill folder)"
        if state == "offline":
            log.warning(
                "glasscockpit: cannot reach %s (%s); training continues, frames are "
                "kept in %s and sent when the server is up",
                self.url,
                error,
                where,
            )
        elif state == "reconnecting":
            log.warning(
                "glasscockpit: lost the connection to %s (%s); retrying in the "
                "background, frames are kept in %s meanwhile",
                self.url,
                error,
                where,
            )
        elif state == "rejected":
            log.warning(
                "glasscockpit: %s rejected run %r: %s; not retrying. Training "
                "continues and frames are kept in %s",
                self.url,
                self.hello.run,
                error,
                where,
            )
        elif state == "live" and prev in ("offline", "reconnecting"):
            log.warning("glasscockpit: connected to %s again", self.url)

    def _send_loop(self) -> None:
        assert self.url is not None
        delay = self.options.backoff[0]
        first = True
        while not self._stop.is_set():
            if not first:
                self.stats.reconnects += 1
            first = False
            try:
                headers = (
                    {"Authorization": f"Bearer {self.token}"} if self.token else None
                )
                with connect(
                    self.url,
                    additional_headers=headers,
                    compression=None,
                    open_timeout=self.options.open_timeout,
                    close_timeout=1,
                    max_size=2**20,
                    # Acks are tiny and bounded by what we sent; with flow control
                    # on, >16 unread acks would stop reading and could deadlock
                    # against a server blocked on sending them.
                    max_queue=None,
                ) as ws:
                    self._ws = ws
                    if self._session(ws):
                        return
                    delay = self.options.backoff[0]
            except Exception as exc:  # noqa: BLE001 - any failure: decide, back off
                if self._stop.is_set():
                    return
                with self._lock:
                    if is_fatal(exc):
                        self._set_state("rejected", describe_error(exc))
                        self._lock.notify_all()
                        return
                    nxt = "reconnecting" if self._ever_live else "offline"
                    self._set_state(nxt, describe_error(exc))
                    self._lock.notify_all()
            finally:
                self._ws = None
            if self._closing:
                # One attempt after close() began is all we make: a dead server
                # must not cost the user the whole close timeout.
                return
            # Jittered exponential backoff; close() interrupts the wait.
            self._wake.wait(delay * (0.5 + random.random()))
            self._wake.clear()
            delay = min(delay * 2, self.options.backoff[1])

    def _recv_ack(self, ws: ClientConnection, timeout: float) -> int | None:
        try:
            raw = ws.recv(timeout=timeout)
        except TimeoutError:
            return None
        try:
            msg = decode(raw if isinstance(raw, bytes) else raw.encode())
        except ProtocolError as exc:
            raise WebSocketException(f"bad ack from server: {exc}") from exc
        if not isinstance(msg, Ack):
            raise WebSocketException(f"expected an ack, got {type(msg).__name__}")
        return msg.seq

    def _session(self, ws: ClientConnection) -> bool:
        """Run one connection; True when closing and everything was delivered."""
        ws.send(self._hello_bytes)
        # The ack of the hello is the highest seq the server holds for this run:
        # after a restart without persistence it is lower than what we saw acked.
        deadline = time.monotonic() + self.options.open_timeout
        held: int | None = None
        while held is None:
            if self._stop.is_set():
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"no acknowledgement within {self.options.open_timeout:g} s"
                )
            held = self._recv_ack(ws, min(left, 0.1))
        with self._lock:
            resend = self._rewind(held)
            self._ever_live = True
            self._set_state("live")
            self._lock.notify_all()
        for _, data, _ in resend:
            if self._stop.is_set():
                return False
            ws.send(data)
            self.stats.resent += 1
            self._drain_acks(ws, 0.0)
        while True:
            entry: _Entry | None = None
            with self._lock:
                if self._stop.is_set():
                    return False
                if len(self._unacked) < self.options.max_inflight:
                    entry = self._next_locked()
                    if entry is not None:
                        self._unacked.append(entry)
                if (
                    entry is None
                    and self._closing
                    and not self._pending_locked()
                    and not self._packer.is_alive()
                ):
                    return True
                if entry is None and not self._unacked:
                    self._lock.wait(0.05)
            if entry is not None:
                ws.send(entry[1])
                self.stats.sent += 1
                wait = 0.0
            else:
                wait = 0.05 if self._unacked else 0.0
            self._drain_acks(ws, wait)

    def _drain_acks(self, ws: ClientConnection, wait: float) -> None:
        """Apply every ack that has arrived, waiting up to ``wait`` for the first."""
        while True:
            seq = self._recv_ack(ws, wait)
            if seq is None:
                return
            self._on_ack(seq)
            wait = 0.0

    def _rewind(self, held: int) -> list[_Entry]:
        """Frames to send first on a new connection, given what the server holds."""
        if held > self._last_seq and held > self._acked_seq:
            log.warning(
                "glasscockpit: the server already holds frames up to seq %d of run "
                "%r, beyond this process's %d; is the run id reused?",
                held,
                self.hello.run,
                self._last_seq,
            )
        if held >= self._acked_seq:
            self._ack_locked(held)
        back: list[_Entry] = []
        while self._history and self._history[-1][0] > held:
            entry = self._history.pop()
            self._history_bytes -= len(entry[1])
            back.append(entry)
        back.reverse()
        if self._acked_seq > held:
            first = back[0][0] if back else self._acked_seq + 1
            if first > held + 1:
                log.warning(
                    "glasscockpit: the server lost acknowledged frames %d-%d of run "
                    "%r (restarted without persistence?) and they are no longer held "
                    "in memory; frames from %d on are resent",
                    held + 1,
                    first - 1,
                    self.hello.run,
                    first,
                )
            self._acked_seq = held
        for entry in back:
            self._memory_bytes += len(entry[1])
        self._unacked.extendleft(reversed(back))
        self._update_pending()
        return list(self._unacked)

    def _next_locked(self) -> _Entry | None:
        """The next unsent frame: memory outbox first, then the disk backlog."""
        if not self._outbox and self._backlog_frames:
            self._read_backlog()
        if not self._outbox:
            return None
        entry = self._outbox.popleft()
        return entry

    def _read_backlog(self) -> None:
        """Move the oldest spilled frames back into the outbox (lock held)."""
        assert self.spill_path is not None
        room = max(1, min(256, self.options.max_inflight - len(self._unacked)))
        moved = 0
        end = self._backlog_start
        start, stop = self._backlog_start, self._backlog_end
        try:
            # Read a bounded slice, never the whole backlog (it may be GiBs); if
            # one record is larger than the slice, read just enough for it.
            records = list(
                islice(
                    iter_records(self.spill_path, start, min(stop, start + _SLICE)),
                    room,
                )
            )
            if not records and start + _SLICE < stop:
                limit = min(stop, start + HEADER_SIZE + MAX_RECORD)
                records = list(islice(iter_records(self.spill_path, start, limit), 1))
            for record in records:
                seq = decode(record.payload).seq
                self._outbox.append((seq, record.payload, True))
                self._memory_bytes += len(record.payload)
                end = record.end
                moved += 1
        except (OSError, ProtocolError) as exc:
            lost = self._backlog_frames
            self._backlog_frames = 0
            self._drop(lost, f"the spill file could not be read back ({exc})")
            return
        if moved == 0:
            # Damaged beyond the last intact record: nothing more can be read.
            self._drop(self._backlog_frames, "the spill file is damaged")
            self._backlog_frames = 0
            return
        self._backlog_start = end
        self._backlog_frames -= moved
        if self._backlog_start >= self._backlog_end:
            self._backlog_frames = 0

    def _on_ack(self, seq: int) -> None:
        with self._lock:
            self._ack_locked(seq)
            self._lock.notify_all()

    def _ack_locked(self, seq: int) -> None:
        budget = self.options.history_bytes
        while self._unacked and self._unacked[0][0] <= seq:
            entry = self._unacked.popleft()
            self._memory_bytes -= len(entry[1])
            self.stats.acked += 1
            if budget > 0:
                self._history.append(entry)
                self._history_bytes += len(entry[1])
        while self._history and self._history_bytes > budget:
            self._history_bytes -= len(self._history.popleft()[1])
        self._acked_seq = max(self._acked_seq, seq)
        self._update_pending()

    # -- close -------------------------------------------------------------------
    def _abort_socket(self) -> None:
        """Unblock a sender stuck writing to a server that stopped reading."""
        ws = self._ws
        if ws is None or self._sender is None or not self._sender.is_alive():
            return
        with contextlib.suppress(OSError):
            ws.socket.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):  # best effort at shutdown
            ws.close_socket()

    def _finish(self, waited: float) -> None:
        with self._lock:
            unpacked = len(self._handoff)
            if unpacked:
                self._handoff.clear()
                self._drop(unpacked, "close() timed out while frames were packed")
            memory = list(self._unacked) + list(self._outbox)
            saved = self._backlog_frames
            for _, data, in_file in memory:
                if in_file or self._disk_write(data) is not None:
                    saved += 1
                else:
                    self._drop(1, "close() could not save a frame to disk")
            left = len(memory) + self._backlog_frames
            self._unacked.clear()
            self._outbox.clear()
            self._backlog_frames = 0
            self._memory_bytes = 0
            if self._writer is not None:
                try:
                    self._writer.close(sync=True)
                except OSError as exc:
                    log.warning(
                        "glasscockpit: closing %s failed: %s", self.spill_path, exc
                    )
                self._writer = None
            self._update_pending()
            self.stats.pending = saved
            if (
                self.url is not None
                and not left
                and not self._record
                and self._created_file
                and self.spill_path is not None
            ):
                # Every spilled frame was delivered: the file holds nothing new.
                self.spill_path.unlink(missing_ok=True)
                self.stats.spill_path = None
            state = self.stats.state
            self.stats.state = "closed"
        if self.url is not None and left and not saved:
            log.warning(
                "glasscockpit: %d frame(s) of run %r not delivered to %s after %.1f s "
                "(%s) and lost: no spill file could be written",
                left,
                self.hello.run,
                self.url,
                waited,
                self.stats.last_error or state,
            )
        elif self.url is not None and left:
            log.warning(
                "glasscockpit: %d frame(s) of run %r not delivered to %s after %.1f s "
                "(%s); %d saved in %s, upload them with: glasscockpit sync %s "
                "--server %s",
                left,
                self.hello.run,
                self.url,
                waited,
                self.stats.last_error or state,
                saved,
                self.spill_path,
                self.spill_path,
                server_url(self.url),
            )


def server_url(ingest: str) -> str:
    """The server's base URL for humans, from an ingest URL."""
    base = ingest[: -len("/v1/agent")] if ingest.endswith("/v1/agent") else ingest
    return base.replace("ws://", "http://", 1).replace("wss://", "https://", 1)


def wait_delivered(transport: WebSocketTransport, timeout: float) -> bool:
    """Block until every queued frame is acknowledged (tests and benchmarks)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not transport.undelivered:
            return True
        time.sleep(0.01)
    return not transport.undelivered
