"""Who may see the dashboard and change things: a token, sessions, and CSRF tokens.

Every request needs the token: once in the URL (`/?token=...`, which opens a session and redirects
to the URL without it), as HTTP basic auth (any user name, the token as password), or as
`Authorization: Bearer <token>`. A session lives in a cookie (HttpOnly, SameSite=Strict) and has
its own CSRF token, which the page sends in the `X-CSRF-Token` header of every POST; a POST
without it, with a wrong one, or from another origin is refused with 403. Sessions are kept in
memory: restarting the dashboard logs everyone out.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections import OrderedDict
from urllib.parse import urlencode

from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp

COOKIE = "rabbittask_dashboard"
CSRF_HEADER = "X-CSRF-Token"
MAX_SESSIONS = 1000
MIN_TOKEN_CHARS = 16
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
UNAUTHORIZED = (
    "401 Unauthorized: this dashboard needs its token. Open the URL that `rabbittask dashboard` printed "
    "(it ends in ?token=...), or log in with any user name and the token as password.\n"
)
CSRF_REFUSED = (
    "403 Forbidden: this request changes things and needs the dashboard's CSRF token "
    "(header X-CSRF-Token of your session). Reload the dashboard page and try again."
)


def new_token() -> str:
    """A random access token, printed at start when none is given."""
    return secrets.token_urlsafe(24)


class Sessions:
    """Session ids (the cookie) and their CSRF tokens; the oldest are forgotten beyond `MAX_SESSIONS`."""

    def __init__(self) -> None:
        self._csrf: OrderedDict[str, str] = OrderedDict()

    def open(self) -> str:
        sid = secrets.token_urlsafe(32)
        self._csrf[sid] = secrets.token_urlsafe(32)
        while len(self._csrf) > MAX_SESSIONS:
            self._csrf.popitem(last=False)
        return sid

    def csrf(self, sid: str | None) -> str | None:
        """The CSRF token of session `sid`, or None for an unknown session."""
        return self._csrf.get(sid) if sid else None


def _same(given: str | None, expected: str) -> bool:
    return given is not None and secrets.compare_digest(given.encode(), expected.encode())


class TokenAuth(BaseHTTPMiddleware):
    """Refuses requests without the token (401) and POSTs without their session's CSRF token (403)."""

    def __init__(self, app: ASGIApp, token: str, sessions: Sessions) -> None:
        super().__init__(app)
        self.token = token
        self.sessions = sessions

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        sid = request.cookies.get(COOKIE)
        in_session = self.sessions.csrf(sid) is not None
        if request.method == "GET" and "token" in request.query_params:
            if not _same(request.query_params["token"], self.token):
                return _unauthorized()
            query = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            response: Response = RedirectResponse(request.url.path + (f"?{query}" if query else ""), status_code=303)
            return _set_cookie(response, self.sessions.open())
        if not in_session and not self._header_auth(request):
            return _unauthorized()
        if request.method not in SAFE_METHODS:
            refused = self._check_csrf(request, sid)
            if refused is not None:
                return refused
        request.state.csrf = self.sessions.csrf(sid)
        if in_session:
            return await call_next(request)
        # Header auth (basic or bearer) on a page: open a session, so the page has a CSRF token to send.
        sid = self.sessions.open()
        request.state.csrf = self.sessions.csrf(sid)
        return _set_cookie(await call_next(request), sid)

    def _header_auth(self, request: Request) -> bool:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            return _same(value.strip(), self.token)
        if scheme.lower() == "basic":
            try:
                _, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            return _same(password, self.token)
        return False

    def _check_csrf(self, request: Request, sid: str | None) -> Response | None:
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
            return JSONResponse({"error": f"403 Forbidden: cross-origin request from {origin} refused"}, 403)
        expected = self.sessions.csrf(sid)
        if expected is None or not _same(request.headers.get(CSRF_HEADER), expected):
            return JSONResponse({"error": CSRF_REFUSED}, 403)
        return None


def _set_cookie(response: Response, sid: str) -> Response:
    response.set_cookie(COOKIE, sid, httponly=True, samesite="strict", path="/")
    return response


def _unauthorized() -> Response:
    return PlainTextResponse(
        UNAUTHORIZED, status_code=401, headers={"WWW-Authenticate": 'Basic realm="rabbittask dashboard"'}
    )
