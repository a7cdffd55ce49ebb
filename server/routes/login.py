"""Browser sign-in: a form that trades the token for an HttpOnly session cookie."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from glasscockpit.server import auth
from glasscockpit.server.deps import get_settings_dep
from glasscockpit.server.guards import AuthThrottle

router = APIRouter(tags=["auth"])


@router.get("/login", response_class=Response, include_in_schema=False)
def login_form(next: str = "/") -> Response:  # noqa: A002 - the query name users see
    """The sign-in form (only needed when GLASSCOCKPIT_TOKEN is set)."""
    return auth.login_page(next)


@router.post("/login", response_class=Response, include_in_schema=False)
async def login(request: Request) -> Response:
    """Check the posted token; set the session cookie and go to ``next``."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > auth.MAX_FORM_BYTES:
            break  # a sign-in form is tiny; do not buffer whatever is posted
    settings = get_settings_dep(request)
    throttle: AuthThrottle = request.app.state.throttle
    client = request.client.host if request.client else ""
    wait = throttle.blocked(client)
    if wait > 0:
        return auth.too_many(wait)
    response = await auth.login_submit(
        settings.token,
        body,
        request.url.scheme == "https",
        settings.session_max_age_s,
    )
    if response.status_code == 401:
        throttle.failed(client)
    return response


@router.post("/logout", response_class=Response, include_in_schema=False)
def logout() -> Response:
    """Clear the session cookie."""
    return auth.logout()
