"""Frame delivery off the training thread: bounded, acked, reconnecting.

The training thread only calls ``send`` (a non-blocking append to a bounded
deque). A daemon thread owns the websocket: it sends frames, reads the
server's cumulative acks, keeps unacknowledged frames and resends them after
a reconnect. Nothing here raises into the training loop.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from glasscockpit.protocol import Ack, Frame, Hello, ProtocolError, decode, encode

log = logging.getLogger("glasscockpit.agent")

#: Close codes after which reconnecting cannot help (policy, version, too big).
FATAL_CLOSE_CODES = frozenset({1002, 1003, 1007, 1008, 1009, 4001, 4003})
FATAL_HTTP_STATUS = frozenset({400, 401, 403, 404})


@dataclass
class TransportStats:
    """Delivery counters; ``state``: live, connecting, reconnecting, offline..."""

    sent: int = 0
    acked: int = 0
    resent: int = 0
    dropped: int = 0
    reconnects: int = 0
    state: str = "connecting"
    last_error: str = ""


class Transport(Protocol):
    """Where the agent's frames go."""

    stats: TransportStats

    def send(self, frame: Frame) -> None:
        """Hand over one frame; never blocks, never raises."""

    def close(self, timeout: float) -> None:
        """Deliver what is pending for at most ``timeout`` seconds, then stop."""


class MemoryTransport:
    """Keeps frames in a list: for ``server=None`` and for tests."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.stats = TransportStats(state="offline")

    def send(self, frame: Frame) -> None:
        """Append the frame."""
        self.frames.append(frame)
        self.stats.sent += 1

    def close(self, timeout: float) -> None:  # noqa: ARG002 - protocol signature
        """Nothing to flush."""


def is_fatal(exc: BaseException) -> bool:
    """Whether an error means "stop retrying" (wrong token, wrong protocol)."""
    if isinstance(exc, InvalidStatus):
        return exc.response.status_code in FATAL_HTTP_STATUS
    rcvd = getattr(exc, "rcvd", None)
    return rcvd is not None and rcvd.code in FATAL_CLOSE_CODES


class WebSocketTransport:
    """Sends frames over one websocket from a background thread."""

    def __init__(
        self,
        url: str,
        hello: Hello,
        token: str | None = None,
        max_pending: int = 10_000,
        max_frame_bytes: int = 8 * 2**20,
        backoff: tuple[float, float] = (0.2, 10.0),
    ) -> None:
        self.url = url
        self.hello = hello
        self.token = token
        self.max_frame_bytes = max_frame_bytes
        self.backoff = backoff
        self.stats = TransportStats()
        self._pending: deque[Frame] = deque()
        self._unacked: deque[Frame] = deque()
        self._max_pending = max_pending
        self._lock = threading.Condition()
        self._closing = False
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="glasscockpit-sender", daemon=True
        )
        self._thread.start()

    # -- training thread ---------------------------------------------------
    def send(self, frame: Frame) -> None:
        """Queue one frame; when full, the oldest frame is dropped and counted."""
        with self._lock:
            if len(self._pending) + len(self._unacked) >= self._max_pending:
                source = self._unacked if self._unacked else self._pending
                source.popleft()
                self.stats.dropped += 1
            self._pending.append(frame)
            self._lock.notify()

    def close(self, timeout: float) -> None:
        """Flush for at most ``timeout`` seconds, then stop the thread."""
        with self._lock:
            self._closing = True
            self._lock.notify()
        self._thread.join(timeout)
        self._stopped.set()
        left = len(self._pending) + len(self._unacked)
        if left:
            log.warning(
                "glasscockpit: %d frame(s) of run %r were not delivered to %s (%s)",
                left,
                self.hello.run,
                self.url,
                self.stats.last_error or self.stats.state,
            )

    @property
    def undelivered(self) -> int:
        """Frames queued or sent but not yet acknowledged."""
        return len(self._pending) + len(self._unacked)

    # -- sender thread -----------------------------------------------------
    def _set_state(self, state: str, error: str = "") -> None:
        if state != self.stats.state:
            if state in ("reconnecting", "rejected"):
                log.warning("glasscockpit: %s -> %s %s", self.url, state, error)
            elif state == "live" and self.stats.state == "reconnecting":
                log.warning("glasscockpit: reconnected to %s", self.url)
        self.stats.state = state
        if error:
            self.stats.last_error = error

    def _run(self) -> None:
        delay = self.backoff[0]
        while not self._stopped.is_set():
            try:
                headers = (
                    {"Authorization": f"Bearer {self.token}"} if self.token else None
                )
                with connect(
                    self.url,
                    additional_headers=headers,
                    compression=None,
                    open_timeout=5,
                    close_timeout=1,
                    max_size=2**20,
                ) as ws:
                    delay = self.backoff[0]
                    if self._serve(ws):
                        return
            except Exception as exc:  # noqa: BLE001 - any failure: decide, back off
                if is_fatal(exc):
                    self._set_state("rejected", f"{type(exc).__name__}: {exc}")
                    return
                self._set_state("reconnecting", f"{type(exc).__name__}: {exc}")
            with self._lock:
                if self._closing and not self.undelivered:
                    return
            self.stats.reconnects += 1
            # Jittered exponential backoff; close() bounds the wait by join's timeout.
            self._stopped.wait(delay * (0.5 + random.random()))
            delay = min(delay * 2, self.backoff[1])

    def _serve(self, ws: ClientConnection) -> bool:
        """Run one connection; True when everything was delivered and we are closing."""
        ws.send(encode(self.hello))
        with self._lock:
            resend = list(self._unacked)
        for old in resend:
            ws.send(encode(old))
            self.stats.resent += 1
        self._set_state("live")
        while True:
            with self._lock:
                if not self._pending:
                    if self._closing and not self._unacked:
                        return True
                    self._lock.wait(0.05)
                frame: Frame | None = self._pending.popleft() if self._pending else None
                if frame is not None:
                    self._unacked.append(frame)
            if frame is not None:
                ws.send(encode(frame))
                self.stats.sent += 1
            self._read_acks(ws, wait=0.05 if frame is None and self._unacked else 0)

    def _read_acks(self, ws: ClientConnection, wait: float) -> None:
        while True:
            try:
                raw = ws.recv(timeout=wait)
            except TimeoutError:
                return
            wait = 0
            try:
                msg = decode(raw if isinstance(raw, bytes) else raw.encode())
            except ProtocolError as exc:
                raise WebSocketException(f"bad ack from server: {exc}") from exc
            if isinstance(msg, Ack):
                with self._lock:
                    while self._unacked and self._unacked[0].seq <= msg.seq:
                        self._unacked.popleft()
                        self.stats.acked += 1
                    self._lock.notify_all()


def wait_delivered(transport: WebSocketTransport, timeout: float) -> bool:
    """Block until every queued frame is acknowledged (tests and close)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not transport.undelivered:
            return True
        time.sleep(0.01)
    return not transport.undelivered
