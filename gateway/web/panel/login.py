"""The panel's door: the login page and its form's POST, logout, and the page shown before any user exists.

The login form's POST carries a CSRF token of its own (double submit: a cookie set with the page and the
same value in a header), so a page on another site cannot log a visitor in to an account of its choosing.
Failures count per source address (gateway/web/auth.py: LoginLimiter); past the limit the answer is 429
with Retry-After, before any password is checked.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from urllib.parse import quote

import jinja2
from markupsafe import Markup
from pydantic import BaseModel, ConfigDict, Field

from gateway import __version__
from gateway.web.aiohttp_web import web
from gateway.web.auth import LOGIN_COOKIE, Session, csrf_ok
from gateway.web.panel.context import PANEL, Panel
from gateway.web.requests import error_response, read_body

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    # Every script and style is a file of ours; uPlot sets inline styles from script (allowed by CSSOM).
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
}


class LoginBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: Annotated[str, Field(min_length=1, max_length=64)]
    password: Annotated[str, Field(min_length=1, max_length=1024)]
    next: Annotated[str, Field(max_length=2048)] = "/"


def safe_next(target: str) -> str:
    """Only a path on this server (`//host` would leave it)."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


def render(request: web.Request, template: str, context: dict[str, Any], status: int = 200) -> web.Response:
    panel = request.app[PANEL]
    settings = panel.sources.settings()
    base = {"version": __version__, "gateway_id": settings.gateway.id, "timezone": settings.gateway.timezone,
            "fmt": panel.formats, "static": panel.static_url, "inline_css": Markup(panel.inline_css)}
    if panel.templates is None:
        panel.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("gateway.web.panel", "templates"),
            autoescape=jinja2.select_autoescape(default=True), trim_blocks=True, lstrip_blocks=True)
    html = panel.templates.get_template(template).render({**base, **context})
    response = web.Response(text=html, content_type="text/html", status=status)
    response.headers.update(SECURITY_HEADERS)
    return response


def render_page(request: web.Request, template: str, session: Session, context: dict[str, Any],
                status: int = 200) -> web.Response:
    """A logged-in page: who is logged in, what they may do, the CSRF token for its scripts."""
    panel = request.app[PANEL]
    principal = {"user": session.user, "role": session.role, "csrf": session.csrf,
                 "can_command": session.role in ("operator", "admin"), "is_admin": session.role == "admin",
                 "keepalive_ms": int(panel.keepalive_s * 1000)}
    return render(request, template, {**principal, **context}, status)


def setup_page(request: web.Request) -> web.Response:
    return render(request, "setup.html", {"config_path": request.app[PANEL].config_path})


PageHandler = Callable[[web.Request, Panel, Session], Awaitable[web.StreamResponse]]


def page(handler: PageHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A page that needs a login: the setup page while no user exists, else the login page until logged in."""

    async def endpoint(request: web.Request) -> web.StreamResponse:
        panel = request.app[PANEL]
        if not panel.auth.required:
            return setup_page(request)
        session = panel.auth.session_of(request)
        if session is None:
            raise web.HTTPFound(f"/login?next={quote(request.path_qs, safe='/')}")
        return await handler(request, panel, session)

    endpoint.__name__ = handler.__name__
    return endpoint


async def login_page(request: web.Request) -> web.StreamResponse:
    panel = request.app[PANEL]
    if not panel.auth.required:
        return setup_page(request)
    target = safe_next(request.query.get("next", "/"))
    if panel.auth.session_of(request) is not None:
        raise web.HTTPFound(target)
    token = secrets.token_urlsafe(32)
    response = render(request, "login.html", {"csrf": token, "next": target})
    response.set_cookie(LOGIN_COOKIE, token, path="/login", httponly=True, samesite="Strict",
                        secure=panel.auth.secure_cookies, max_age=3600)
    return response


async def login(request: web.Request) -> web.StreamResponse:
    panel = request.app[PANEL]
    auth = panel.auth
    if not auth.required:
        return error_response(409, "no user is configured: add one to [[users]] in the config (see the panel)")
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not csrf_ok(request, expected):
        return error_response(403, "the login form expired: reload the page and try again")
    source = request.remote or "unknown"
    wait = auth.limiter.retry_after(source)
    if wait is not None:
        seconds = max(1, math.ceil(wait))
        return error_response(429, f"too many failed logins from this address: try again in {seconds} s",
                              headers={"Retry-After": str(seconds)})
    body = await read_body(request, LoginBody)
    assert isinstance(body, LoginBody)
    user = await auth.check_password(body.name, body.password)
    if user is None:
        auth.limiter.failed(source)
        return error_response(401, "wrong name or password")
    auth.limiter.succeeded(source)
    response = web.json_response({"next": safe_next(body.next), "user": user.name, "role": user.role})
    auth.start_session(response, user)
    response.del_cookie(LOGIN_COOKIE, path="/login")
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    auth = request.app[PANEL].auth
    session = auth.session_of(request)
    if session is None:
        return error_response(401, "not logged in")
    if not csrf_ok(request, session.csrf):
        return error_response(403, "missing or wrong CSRF token")
    response = web.json_response({"next": "/login"})
    auth.end_session(response, session)
    return response


async def whoami(request: web.Request) -> web.StreamResponse:
    """The page's script asks this before it reconnects a dropped live stream: still logged in?"""
    auth = request.app[PANEL].auth
    session = auth.session_of(request) if auth.required else None
    if session is None:
        return error_response(401, "not logged in")
    return web.json_response({"user": session.user, "role": session.role})
