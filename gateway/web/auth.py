"""Logins for the panel and the REST API: sessions, API tokens, login rate limits, CSRF, roles, TLS.

With no user configured nothing here applies to the REST API (it answers anonymous requests as it always
did) and the panel shows how to add a user. With users configured every REST API request needs a
principal: a panel session (cookie), an API token (`Authorization: Bearer`), or, when
`panel.loopback_anonymous_api` is on, a request from the box itself. A state change needs the operator
role, and one made with a session cookie also its CSRF token in the `X-CSRF-Token` header (a cookie is
sent by the browser whoever wrote the page; the header only by our own pages' scripts).

Sessions live in memory (a restart logs everyone out): bounded in number, ending after an idle spell and
in any case some hours after the login, both on the injected clock.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

from gateway.core.clock import Clock
from gateway.core.passwords import hash_password, verify_password, warm_up
from gateway.settings_users import ROLE_RANK, PanelSection, Role, UserSettings
from gateway.web.aiohttp_web import web
from gateway.web.api import AUDIT_SOURCE
from gateway.web.requests import error_response

SESSION_COOKIE = "eg_session"
LOGIN_COOKIE = "eg_login"  # the login form's own CSRF token (double submit: cookie and header must agree)
CSRF_HEADER = "X-CSRF-Token"
LOOPBACK = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_LIMITED_SOURCES = 10_000  # login failures are remembered for at most this many addresses


@dataclass(slots=True)
class Session:
    sid: str
    user: str
    role: Role
    csrf: str
    created_at: float
    last_used: float


class Sessions:
    """Logged-in browsers by session id; the oldest is dropped when a login would pass the limit."""

    def __init__(self, *, idle_s: float, max_s: float, limit: int, clock: Clock) -> None:
        self.idle_s = idle_s
        self.max_s = max_s
        self._limit = limit
        self._clock = clock
        self._by_id: dict[str, Session] = {}  # insertion order: oldest first

    def __len__(self) -> int:
        return len(self._by_id)

    def create(self, user: str, role: Role) -> Session:
        while len(self._by_id) >= self._limit:
            del self._by_id[next(iter(self._by_id))]
        now = self._clock.now()
        session = Session(secrets.token_urlsafe(32), user, role, secrets.token_urlsafe(32), now, now)
        self._by_id[session.sid] = session
        return session

    def get(self, sid: str) -> Session | None:
        """The live session of this id (its idle time restarts), None when unknown or expired."""
        session = self._live(sid)
        if session is not None:
            session.last_used = self._clock.now()
        return session

    def alive(self, sid: str) -> bool:
        """Is it still valid? Not a use: a page left open alone does not keep its session alive."""
        return self._live(sid) is not None

    def _live(self, sid: str) -> Session | None:
        session = self._by_id.get(sid)
        if session is None:
            return None
        now = self._clock.now()
        if now - session.last_used > self.idle_s or now - session.created_at > self.max_s:
            del self._by_id[sid]
            return None
        return session

    def end(self, sid: str) -> None:
        self._by_id.pop(sid, None)


class LoginLimiter:
    """At most `attempts` failed logins per source address within a sliding window."""

    def __init__(self, *, attempts: int, window_s: float, clock: Clock) -> None:
        self._attempts = attempts
        self._window_s = window_s
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, source: str) -> float | None:
        """Seconds until this source may try again, None when it may now."""
        failures = self._failures.get(source)
        if failures is None:
            return None
        now = self._clock.now()
        while failures and failures[0] <= now - self._window_s:
            failures.popleft()
        if not failures:
            del self._failures[source]
            return None
        if len(failures) < self._attempts:
            return None
        return max(0.0, failures[0] + self._window_s - now)

    def failed(self, source: str) -> None:
        failures = self._failures.pop(source, None) or deque(maxlen=self._attempts)
        failures.append(self._clock.now())
        self._failures[source] = failures  # re-inserted: the dict's order is least recently failed first
        while len(self._failures) > MAX_LIMITED_SOURCES:
            del self._failures[next(iter(self._failures))]

    def succeeded(self, source: str) -> None:
        self._failures.pop(source, None)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who makes a request, and how they proved it."""

    name: str
    role: Role
    via: Literal["session", "token", "loopback"]
    session: Session | None = None

    def may(self, role: Role) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


class Auth:
    """The configured users and tokens, the sessions and the login limiter of one server."""

    def __init__(self, users: list[UserSettings], panel: PanelSection, *, clock: Clock) -> None:
        self.users = {user.name: user for user in users}
        self._tokens = {token.token_sha256: token for token in panel.api_tokens}
        self.required = bool(self.users)  # no user: the API stays open and the panel explains the setup
        self.secure_cookies = panel.tls
        self._loopback_anonymous = panel.loopback_anonymous_api
        self.sessions = Sessions(idle_s=panel.session_idle_minutes * 60.0, max_s=panel.session_max_hours * 3600.0,
                                 limit=panel.max_sessions, clock=clock)
        self.limiter = LoginLimiter(attempts=panel.login_attempts, window_s=panel.login_window_seconds, clock=clock)
        self._pool: ThreadPoolExecutor | None = None
        self._unknown_user_hash: str | None = None
        if self.required:
            warm_up()  # argon2's first use must be on this thread (gateway/core/passwords.py)

    async def check_password(self, name: str, password: str) -> UserSettings | None:
        """The user if the password is theirs. An unknown name costs the same argon2 work as a known one."""
        user = self.users.get(name)
        if user is None and self._unknown_user_hash is None:
            self._unknown_user_hash = hash_password(secrets.token_hex(16))
        password_hash = user.password_hash if user is not None else self._unknown_user_hash
        assert password_hash is not None
        if self._pool is None:  # one thread: argon2 holds its memory cost per check in flight
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="panel-login")
        ok = await asyncio.get_running_loop().run_in_executor(self._pool, verify_password, password_hash, password)
        return user if ok else None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def session_of(self, request: web.Request) -> Session | None:
        sid = request.cookies.get(SESSION_COOKIE)
        return self.sessions.get(sid) if sid else None

    def principal(self, request: web.Request) -> Principal | None:
        """The request's principal for the REST API: session, bearer token, or loopback (when allowed)."""
        session = self.session_of(request)
        if session is not None:
            return Principal(session.user, session.role, "session", session)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            found = self._tokens.get(hashlib.sha256(token.strip().encode()).hexdigest())
            return Principal(found.name, found.role, "token") if found is not None else None
        if self._loopback_anonymous and request.remote in LOOPBACK:
            return Principal("loopback", "admin", "loopback")
        return None

    def start_session(self, response: web.StreamResponse, user: UserSettings) -> Session:
        session = self.sessions.create(user.name, user.role)
        response.set_cookie(SESSION_COOKIE, session.sid, path="/", httponly=True, samesite="Strict",
                            secure=self.secure_cookies, max_age=int(self.sessions.max_s))
        return session

    def end_session(self, response: web.StreamResponse, session: Session) -> None:
        self.sessions.end(session.sid)
        response.del_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="Strict", secure=self.secure_cookies)


AUTH = web.AppKey("edge_gateway_auth", Auth)


def csrf_ok(request: web.Request, expected: str) -> bool:
    return hmac.compare_digest(request.headers.get(CSRF_HEADER, "").encode(), expected.encode())


def _is_api(path: str) -> bool:
    return path.startswith("/api/") or path in ("/health", "/metrics")


@web.middleware
async def api_access(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
    """The REST API's door: who asks (401 if nobody), may they (403), and the CSRF token of a session."""
    auth = request.app[AUTH]
    if not auth.required or not _is_api(request.path):
        return await handler(request)
    principal = auth.principal(request)
    if principal is None:
        return error_response(401, "login required: a panel session or Authorization: Bearer <API token>",
                              headers={"WWW-Authenticate": 'Bearer realm="edge-gateway"'})
    if request.method in STATE_CHANGING:
        if not principal.may("operator"):
            return error_response(403, f"a {principal.role} may not change anything (operator or admin needed)")
        if principal.session is not None and not csrf_ok(request, principal.session.csrf):
            return error_response(403, f"missing or wrong CSRF token (header {CSRF_HEADER})")
    request[AUDIT_SOURCE] = "panel" if principal.via == "session" else "api"
    return await handler(request)


def tls_context(panel: PanelSection) -> ssl.SSLContext | None:
    """A server context for the configured certificate (None: plain HTTP). No CA store is loaded: the
    panel does not ask browsers for client certificates."""
    if panel.certfile is None or panel.keyfile is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(panel.certfile, panel.keyfile)
    return context
