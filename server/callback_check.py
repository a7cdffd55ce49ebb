"""Refuse malformed Dash callback requests with 400 before Dash sees them.

Dash answers any request it cannot dispatch (not JSON, an unknown output, the
wrong number of inputs) with a 500, which reads as a server bug in logs and
monitoring and hides real ones. This middleware checks the request's shape
against the app's registered callbacks and answers 400 with what is wrong;
well-formed requests go to Dash unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PATH = "/_dash-update-component"
#: A callback request carries the page's inputs and state: generous, but bounded.
MAX_BODY = 16 * 2**20


def problem(body: bytes, callbacks: Mapping[str, Mapping[str, Any]]) -> str | None:
    """What is wrong with a callback request body, or None."""
    try:
        req = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return "the body is not JSON"
    if not isinstance(req, dict):
        return "the body must be a JSON object"
    output = req.get("output")
    if not isinstance(output, str) or output not in callbacks:
        return "'output' names no registered callback"
    spec = callbacks[output]
    for field in ("inputs", "state"):
        items = req.get(field, [])
        if not isinstance(items, list) or not all(
            isinstance(i, dict | list) for i in items
        ):
            return f"'{field}' must be a list of objects"
        if len(items) != len(spec.get(field, [])):
            return f"'{field}' must have {len(spec.get(field, []))} entries"
    if not isinstance(req.get("changedPropIds", []), list):
        return "'changedPropIds' must be a list"
    return None


class CallbackCheckMiddleware:
    """Answer 400 to malformed ``/_dash-update-component`` requests."""

    def __init__(
        self, app: ASGIApp, callbacks: Callable[[], Mapping[str, Mapping[str, Any]]]
    ) -> None:
        self.app = app
        self.callbacks = callbacks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check callback requests; pass everything else on untouched."""
        if scope["type"] != "http" or scope["path"] != PATH:
            await self.app(scope, receive, send)
            return
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_BODY:
                await JSONResponse(
                    {"error": "TooLarge", "detail": f"over {MAX_BODY} bytes"}, 413
                )(scope, receive, send)
                return
        why = problem(body, self.callbacks()) if scope["method"] == "POST" else None
        if why is not None:
            response = JSONResponse({"error": "BadCallback", "detail": why}, 400)
            await response(scope, receive, send)
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
