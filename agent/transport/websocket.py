"""Frame delivery off the training thread: bounded, acked, reconnecting, spilling.

Three parties, so that neither a slow GPU copy nor a stuck socket can reach the
training loop:

* the **training thread** only calls ``send``: an append to a bounded hand-off
  deque (when it is full the frame is dropped and counted, never waited for);
* the **packer thread** waits for a frame's device→host copy (a CUDA event on
  GPUs), encodes it and places it: in the in-memory outbox while the server is
  reachable and memory is within budget, otherwise appended to the spill file
  (``agent/transport/spill.py``); with ``record=path`` every frame also goes to
  that file;
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

Layout: ``transport_base.py`` (stats, options, the ``Transport`` protocol, error
classification, the shared state), ``transport_packer.py`` (packer thread, spill
decisions), ``transport_sender.py`` (sender thread: connection loop, acks, resend);
this module composes them and keeps every public name importable from here.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections import deque
from pathlib import Path

from websockets.sync.client import ClientConnection

from glasscockpit.agent.transport.base import (
    FATAL_CLOSE_CODES,
    FATAL_HTTP_STATUS,
    STATES,
    Deferred,
    Entry,
    Item,
    Transport,
    TransportOptions,
    TransportStats,
    describe_error,
    is_fatal,
    log,
    resolve,
    server_url,
)
from glasscockpit.agent.transport.packer import Packer
from glasscockpit.agent.transport.sender import Sender
from glasscockpit.agent.transport.spill import SpillWriter
from glasscockpit.protocol import Frame, Hello, encode


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

    def drain(self) -> list[Frame]:
        """Every frame sent so far, forgotten here (long in-memory runs, benchmarks)."""
        frames, self._items = self.frames, []
        return frames

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


class WebSocketTransport(Packer, Sender):
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
        self._unacked: deque[Entry] = deque()
        self._outbox: deque[Entry] = deque()
        self._memory_bytes = 0
        self._history: deque[Entry] = deque()
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


def wait_delivered(transport: WebSocketTransport, timeout: float) -> bool:
    """Block until every queued frame is acknowledged (tests and benchmarks)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not transport.undelivered:
            return True
        time.sleep(0.01)
    return not transport.undelivered


__all__ = [
    "FATAL_CLOSE_CODES",
    "FATAL_HTTP_STATUS",
    "STATES",
    "Deferred",
    "Item",
    "MemoryTransport",
    "Transport",
    "TransportOptions",
    "TransportStats",
    "WebSocketTransport",
    "describe_error",
    "is_fatal",
    "resolve",
    "server_url",
    "wait_delivered",
]
