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

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from glasscockpit.protocol import Ack, Hello, ProtocolError, encode
from glasscockpit.server.deps import get_metrics, get_settings_dep, get_store, token_ok
from glasscockpit.server.errors import Rejected, rejection
from glasscockpit.server.ratelimit import TokenBucket
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

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
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
                    seq = self.seq
                    await self.ws.send_bytes(encode(Ack(self.run, seq)))
                    self.sent = seq

    async def flush(self) -> None:
        """Send what is owed, then stop the task (before closing the socket)."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        with contextlib.suppress(Exception):
            if self.sent < self.seq:
                await self.ws.send_bytes(encode(Ack(self.run, self.seq)))
                self.sent = self.seq


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
    if not token_ok(settings, ws):
        metrics["rejected.unauthorized"] += 1
        # Closing before accept answers the handshake with HTTP 403.
        await ws.close(code=1008, reason="missing or wrong token")
        return
    await ws.accept()
    metrics["connections"] += 1
    frames = TokenBucket(settings.rate_frames_per_s, settings.rate_burst)
    volume = TokenBucket(
        settings.rate_bytes_per_s,
        max(settings.rate_bytes_per_s, settings.max_frame_bytes),
    )
    run: Run | None = None
    run_id: str | None = None
    acks = Acks(ws)
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
            if run_id is None and not isinstance(frame, Hello):
                raise Rejected(
                    "no_hello", "the first frame of a connection must be a hello frame"
                )
            if run_id is not None and frame.run != run_id:
                raise Rejected(
                    "run_switch",
                    f"frame for run {frame.run!r} on the connection of {run_id!r}",
                )
            fresh = store.ingest(frame, raw=data)
            metrics["frames.in" if fresh else "frames.duplicate"] += 1
            metrics["bytes.in"] += len(data)
            if run_id is None:
                run_id = frame.run
                run = store.get(run_id)
                if run is not None:
                    run.connected += 1
            ack = frame.seq
            stored = store.get(frame.run) if isinstance(frame, Hello) else None
            if stored is not None:
                # The hello's ack tells a reconnecting agent what is already stored,
                # so it resends only what this server lacks (e.g. after a restart).
                ack = max(ack, stored.last_seq)
            acks.stored(frame.run, ack)
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
        if run is not None:
            run.connected -= 1


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(RuntimeError, OSError):  # the client may be gone
        await ws.close(code=code, reason=close_reason(reason))
