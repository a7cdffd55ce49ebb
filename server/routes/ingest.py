"""Websocket ingest: agents send msgpack frames, the server stores and acks them."""

from __future__ import annotations

import logging

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from glasscockpit.protocol import Ack, Hello, ProtocolError, decode, encode
from glasscockpit.server.deps import get_metrics, get_settings_dep, get_store, token_ok
from glasscockpit.server.errors import close_code
from glasscockpit.server.store import Run

router = APIRouter(tags=["ingest"])
log = logging.getLogger("glasscockpit.server")


@router.websocket("/v1/agent")
async def ingest(ws: WebSocket) -> None:
    """One agent connection: a hello frame, then readings and a bye, each acked."""
    settings = get_settings_dep(ws)
    store = get_store(ws)
    metrics = get_metrics(ws)
    if not token_ok(settings, ws):
        metrics["rejected.unauthorized"] += 1
        await ws.close(
            code=1008, reason="missing or wrong token"
        )  # before accept: HTTP 403
        return
    await ws.accept()
    run: Run | None = None
    run_id: str | None = None
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None:
                metrics["rejected.text_frame"] += 1
                await ws.close(code=1003, reason="frames must be binary msgpack")
                return
            try:
                frame = decode(data, max_size=settings.max_frame_bytes)
                if run_id is None and not isinstance(frame, Hello):
                    raise ProtocolError(
                        "the first frame of a connection must be a hello frame"
                    )
                if run_id is not None and frame.run != run_id:
                    raise ProtocolError(
                        f"frame for run {frame.run!r} on the connection of {run_id!r}"
                    )
                if isinstance(frame, Ack):
                    raise ProtocolError("agents do not send ack frames")
            except ProtocolError as exc:
                metrics[f"rejected.{type(exc).__name__}"] += 1
                await ws.close(code=close_code(exc), reason=str(exc)[:120])
                return
            fresh = store.ingest(frame)
            metrics["frames.in" if fresh else "frames.duplicate"] += 1
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
            await ws.send_bytes(encode(Ack(frame.run, ack)))
    except WebSocketDisconnect:
        return
    finally:
        if run is not None:
            run.connected -= 1
