"""Websocket ingest: agents send msgpack frames, the server stores and acks them.

One connection carries one run: a hello frame first, then readings and a bye, each
acknowledged once stored (and logged, with a data dir). A frame the server refuses
closes the connection with a specific code and reason (see ``server/errors.py``) and
increments ``rejected.<reason>``; it never affects another connection or run.
Connections are rate limited by token buckets that delay reading (backpressure, see
``server/ratelimit.py``), counted as ``ingest.throttled``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from glasscockpit.protocol import Ack, Hello, ProtocolError, encode
from glasscockpit.server.auth import agent_refusal
from glasscockpit.server.deps import get_gate, get_metrics, get_settings_dep, get_store
from glasscockpit.server.errors import Rejected, rejection
from glasscockpit.server.guards import AuthThrottle
from glasscockpit.server.store import Run
from glasscockpit.server.wire import decode_frame

router = APIRouter(tags=["ingest"])
log = logging.getLogger("glasscockpit.server")
#: Under a steady backlog, yield to the ack task at least every this many frames.
ACK_EVERY = 64
MAX_REASON_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes


class Acks:
    """Sends cumulative acks from a task of its own, coalescing under load.

    While the receive loop has a backlog it never yields, so the task sends one
    ack for the newest stored frame instead of one per frame; an idle connection
    still gets each ack at once. Acks only ever name frames already stored.
    """

    def __init__(
        self, ws: WebSocket, sync: Callable[[str], None] | None = None
    ) -> None:
        self.ws = ws
        self.sync = sync  # GLASSCOCKPIT_FSYNC: make the log durable before acking
        self.failed: BaseException | None = None
        self.run = ""
        self.seq = -1  # newest stored seq
        self.sent = -1
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._send_loop())

    def stored(self, run: str, seq: int) -> None:
        """A frame is stored: make sure an ack covering it goes out."""
        self.run = run
        self.seq = max(self.seq, seq)
        self._wake.set()

    async def _send_loop(self) -> None:
        with contextlib.suppress(Exception):  # the client left; receive sees it
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self.sent < self.seq:
                    await self._send(self.seq)

    async def _send(self, seq: int) -> None:
        if self.sync is not None:
            # Group commit: one fsync in a worker thread covers every frame
            # written so far, while the receive loop keeps storing new ones.
            try:
                await asyncio.to_thread(self.sync, self.run)
            except OSError as exc:
                # Not durable, so never acknowledged: close (1011, the agent
                # retries and resends from its last acknowledged frame).
                self.failed = exc
                log.error("glasscockpit: fsync of run %r failed: %s", self.run, exc)
                await _close(self.ws, 1011, "cannot sync the frame log")
                raise
        await self.ws.send_bytes(encode(Ack(self.run, seq)))
        self.sent = seq

    async def flush(self) -> None:
        """Send what is owed, then stop the task (before closing the socket)."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        with contextlib.suppress(Exception):
            if self.sent < self.seq and self.failed is None:
                await self._send(self.seq)


def close_reason(text: str) -> str:
    """``text`` cut to what a close frame can carry, on a character boundary."""
    raw = text.encode()[:MAX_REASON_BYTES]
    return raw.decode("utf-8", "ignore")


@router.websocket("/v1/agent")
async def ingest(ws: WebSocket) -> None:
    """One agent connection: a hello frame, then readings and a bye, each acked."""
    settings = get_settings_dep(ws)
    store = get_store(ws)
    metrics = get_metrics(ws)
    client = ws.client.host if ws.client else ""
    throttle: AuthThrottle = ws.app.state.throttle
    refused = "throttled" if throttle.blocked(client) else None
    refused = refused or agent_refusal(settings.token, ws)
    if refused is not None:
        metrics[f"rejected.{refused}"] += 1
        if refused == "unauthorized":
            throttle.failed(client)
        # Closing before accept answers the handshake with HTTP 403.
        await ws.close(code=1008, reason=refused)
        return
    gate = get_gate(ws)
    crowded = gate.enter(client)
    try:
        await ws.accept()
    except Exception:
        gate.leave(client)
        raise
    if crowded:
        gate.leave(client)
        metrics["rejected.connections"] += 1
        await _close(ws, 1013, crowded)  # try again later: the agent retries
        return
    metrics["connections"] += 1
    frames, volume = gate.buckets(client)
    run: Run | None = None
    run_id: str | None = None  # the id this connection's frames are stored under
    logs = store.logs
    acks = Acks(ws, logs.sync if logs is not None and settings.fsync else None)
    backlog = 0
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                if message.get("code") == 1009:
                    # uvicorn refused a message above ws_max_size before we saw it.
                    metrics["rejected.too_large"] += 1
                return
            data = message.get("bytes")
            if data is None:
                raise Rejected("text_frame", "frames must be binary msgpack", 1003)
            wait = max(frames.take(1), volume.take(len(data)))
            if wait > 0:
                metrics["ingest.throttled"] += 1
                await asyncio.sleep(wait)
            frame = decode_frame(data, settings.max_frame_bytes)
            if isinstance(frame, Ack):
                raise Rejected("schema", "agents do not send ack frames")
            if run is None and not isinstance(frame, Hello):
                raise Rejected(
                    "no_hello", "the first frame of a connection must be a hello frame"
                )
            if run is not None and frame.run != run.origin:
                raise Rejected(
                    "run_switch",
                    f"frame for run {frame.run!r} on the connection of {run.origin!r}",
                )
            if isinstance(frame, Hello):
                run_id = store.hello(frame, raw=data, run_id=run_id)
                fresh = True
            else:
                fresh = store.ingest(frame, raw=data, run_id=run_id)
            metrics["frames.in" if fresh else "frames.duplicate"] += 1
            metrics["bytes.in"] += len(data)
            ack = frame.seq
            if run is None:
                run = store.get(run_id or frame.run)
                if run is not None:
                    run.connected += 1
            if isinstance(frame, Hello) and run is not None:
                # The hello's ack tells a reconnecting agent what is already stored,
                # so it resends only what this server lacks (e.g. after a restart),
                # and names the run its frames are stored under (a reused id gets
                # a suffix, see RunStore.hello).
                ack = max(ack, run.last_seq)
            acks.stored(run_id or frame.run, ack)
            backlog += 1
            if backlog >= ACK_EVERY:
                # Let the ack task run even if frames keep arriving back to back.
                backlog = 0
                await asyncio.sleep(0)
    except WebSocketDisconnect:
        return
    except (Rejected, ProtocolError) as exc:
        await acks.flush()  # frames stored before the bad one stay acknowledged
        rejected = exc if isinstance(exc, Rejected) else rejection(exc)
        metrics[f"rejected.{rejected.reason}"] += 1
        log.info(
            "glasscockpit: rejected a frame (%s) from %s: %s",
            rejected.reason,
            ws.client,
            rejected,
        )
        await _close(ws, rejected.ws_code, str(rejected))
    except Exception:  # a bug must cost one connection, never the server
        await acks.flush()
        metrics["rejected.internal"] += 1
        log.exception("glasscockpit: ingest failed for run %r", run_id)
        await _close(ws, 1011, "internal server error")
    finally:
        await acks.flush()
        gate.leave(client)
        if run is not None:
            run.connected -= 1


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(RuntimeError, OSError):  # the client may be gone
        await ws.close(code=code, reason=close_reason(reason))
