"""What every transport shares: stats, options, the protocol, errors, state.

``WebSocketTransport`` (``transport.py``) is built from a packer
(``transport_packer.py``) and a sender (``transport_sender.py``) over the state
declared here in ``DeliveryState``; the module docs of ``transport.py`` describe
how they work together.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection

from glasscockpit.agent.transport.spill import SpillWriter
from glasscockpit.protocol import Bye, Frame, Hello, Readings

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
        run_id: the id the server stores the run under, when it differs from the
            requested one (that id was taken by another run); "" otherwise.
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
    run_id: str = ""


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
SLICE = 2**20

# (seq, encoded frame, already written to the spill/record file)
Entry = tuple[int, bytes, bool]


def server_url(ingest: str) -> str:
    """The server's base URL for humans, from an ingest URL."""
    base = ingest[: -len("/v1/agent")] if ingest.endswith("/v1/agent") else ingest
    return base.replace("ws://", "http://", 1).replace("wss://", "https://", 1)


class DeliveryState:
    """State shared by the packer, the sender and ``close``; see transport.py.

    Attributes are set by ``WebSocketTransport.__init__``, which says which of
    them ``_lock`` guards. The helpers below are called with ``_lock`` held,
    except ``_drop``.
    """

    url: str | None
    hello: Hello
    token: str | None
    options: TransportOptions
    stats: TransportStats
    spill_path: Path | None
    _hello_bytes: bytes
    _record: bool
    _handoff: deque[Item]
    _handoff_ready: threading.Event
    _lock: threading.Condition
    _unacked: deque[Entry]
    _outbox: deque[Entry]
    _memory_bytes: int
    _history: deque[Entry]
    _history_bytes: int
    _acked_seq: int
    _last_seq: int
    _backlog_start: int
    _backlog_end: int
    _backlog_frames: int
    _writer: SpillWriter | None
    _created_file: bool
    _disk_state: str
    _drop_reasons: set[str]
    _count_lock: threading.Lock
    _ever_live: bool
    _closing: bool
    _closed: bool
    _stop: threading.Event
    _wake: threading.Event
    _ws: ClientConnection | None
    _packer: threading.Thread
    _sender: threading.Thread | None

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
