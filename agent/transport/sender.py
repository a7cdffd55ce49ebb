"""The sender thread: owns the websocket, resends what the server lacks, reads acks.

On every connection it sends the hello frame, learns from its acknowledgement which
frames the server already holds, resends the missing ones, then streams the outbox
and the spill backlog in sequence order.
"""

from __future__ import annotations

import random
import time
from itertools import islice

from websockets.exceptions import WebSocketException
from websockets.sync.client import ClientConnection, connect

from glasscockpit.agent.transport.base import (
    SLICE,
    DeliveryState,
    Entry,
    describe_error,
    is_fatal,
    log,
)
from glasscockpit.agent.transport.spill import HEADER_SIZE, MAX_RECORD, iter_records
from glasscockpit.protocol import Ack, ProtocolError, decode


class Sender(DeliveryState):
    """Mixin of ``WebSocketTransport``: connection loop, acks, resend, backlog."""

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
        if msg.run != self.stats.run_id and msg.run != self.hello.run:
            # The id was taken by another run: the server stores ours under a new
            # id (digits-sgd-2) and says so in its acks. Say it once, loudly.
            self.stats.run_id = msg.run
            log.warning(
                "glasscockpit: run id %r was already used by another run; the "
                "server stores this run as %r",
                self.hello.run,
                msg.run,
            )
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
            entry: Entry | None = None
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

    def _rewind(self, held: int) -> list[Entry]:
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
        back: list[Entry] = []
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

    def _next_locked(self) -> Entry | None:
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
                    iter_records(self.spill_path, start, min(stop, start + SLICE)),
                    room,
                )
            )
            if not records and start + SLICE < stop:
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
