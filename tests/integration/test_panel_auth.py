"""Logins for the panel and the REST API against a real gateway over HTTP: sessions, roles, CSRF, API tokens,
login rate limiting, session expiry (on the injected clock), logout, loopback access, TLS, and the REST API
staying open as before while no user is configured."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.core.clock import ManualClock
from gateway.core.errors import StartupError
from tests.fixtures.gateway import GatewayFactory, RunningGateway
from tests.fixtures.panel import TOKENS, PanelClient, base_url, users_config

COMMAND = {"action": "setFanSpeed", "value": 3, "wait": False}


@contextlib.asynccontextmanager
async def client(gw: RunningGateway, *, scheme: str = "http",
                 ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[PanelClient]:
    # unsafe=True: keep cookies of an IP address host (127.0.0.1), as a browser does
    connector = aiohttp.TCPConnector(ssl=ssl_context) if ssl_context is not None else None
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=20)) as http:
        yield PanelClient(base_url(gw, scheme), http)


async def test_without_users_the_api_stays_open_and_the_panel_explains_the_setup(
        gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()
    async with client(gw) as c:
        status, devices = await c.call("GET", "/api/device/list/all")
        assert status == 200 and [d["id"] for d in devices] == ["AP-01", "AP-02"]
        assert (await c.call("POST", "/api/device/AP-01/command", COMMAND))[0] == 202
        for path in ("/", "/device/AP-01", "/gateway", "/login"):
            status, page = await c.call("GET", path)
            assert status == 200 and "No user is configured yet" in page and "hash-password" in page, path
        assert (await c.call("POST", "/login", {"name": "x", "password": "y"}))[0] == 409
        assert (await c.call("GET", "/panel/events"))[0] == 401


async def test_with_users_nothing_answers_without_a_login(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(extra=users_config())
    async with client(gw) as c:
        for path in ("/api/device/list/all", "/health", "/metrics", "/api/openapi.json", "/api/device/AP-01/state",
                     "/api/schedule"):
            status, data = await c.call("GET", path)
            assert status == 401 and data["error"]["status"] == 401, path
        assert (await c.call("POST", "/api/device/AP-01/command", COMMAND))[0] == 401
        status, _ = await c.call("GET", "/device/AP-01")
        assert status == 302
        async with c.http.get(f"{c.base}/device/AP-01", allow_redirects=False) as resp:
            assert resp.headers["Location"] == "/login?next=/device/AP-01"
        assert (await c.call("GET", "/panel/events"))[0] == 401
        assert (await c.call("GET", "/panel/series/AP-01"))[0] == 401
        # the static files are public (no data in them)
        async with c.http.get(f"{c.base}/panel/static/panel.css") as resp:
            assert resp.status == 200


async def test_login_sets_a_strict_http_only_session_and_roles_decide_what_it_may_do(
        gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(extra=users_config())
    async with client(gw) as c:
        # the login form's own CSRF token: a POST without it (or with another) is refused before any check
        assert (await c.call("POST", "/login", {"name": "otto", "password": "pw-otto"}))[0] == 403
        status, data = await c.login("otto", "wrong")
        assert status == 401 and data["error"]["message"] == "wrong name or password"
        status, data = await c.login("nobody")
        assert status == 401 and data["error"]["message"] == "wrong name or password"
        async with c.http.get(f"{c.base}/login") as resp:
            assert resp.status == 200
        status, data = await c.login("otto")
        assert status == 200 and data == {"next": "/", "user": "otto", "role": "operator"}
        cookie = c.set_cookies["eg_session"]
        assert cookie["httponly"] and cookie["samesite"] == "Strict" and not cookie["secure"] and cookie["path"] == "/"

        assert (await c.call("GET", "/api/device/list/all"))[0] == 200
        status, page = await c.call("GET", "/")
        assert status == 200 and 'data-device="AP-01"' in page and "otto" in page
        # a state change with the session needs the CSRF token in its header
        status, data = await c.call("POST", "/api/device/AP-01/command", COMMAND, csrf="")
        assert status == 403 and "CSRF" in data["error"]["message"]
        assert (await c.call("POST", "/api/device/AP-01/command", COMMAND, csrf="forged"))[0] == 403
        status, record = await c.call("POST", "/api/device/AP-01/command", COMMAND)
        assert status == 202 and record["source"] == "panel"
        # an operator's gateway page leaves out the admin's details
        status, page = await c.call("GET", "/gateway")
        assert status == 200 and 'id="quarantine"' not in page and "shown to admins" in page

    async with client(gw) as viewer:
        assert (await viewer.login("vera"))[0] == 200
        assert (await viewer.call("GET", "/api/device/AP-01/state"))[0] == 200
        for method, path, body in [("POST", "/api/device/AP-01/command", COMMAND),
                                   ("POST", "/api/preclean", {"deviceId": "AP-01", "fanSpeed": 4, "minutes": 5}),
                                   ("POST", "/api/schedule", {"deviceId": "AP-01", "days": ["Mon"], "start": "08:00",
                                                              "end": "09:00", "fanSpeed": 2}),
                                   ("DELETE", "/api/schedule/1", None)]:
            status, data = await viewer.call(method, path, body)
            assert status == 403 and "viewer" in data["error"]["message"], (method, path)
        status, page = await viewer.call("GET", "/device/AP-01")
        assert status == 200 and "you can watch, not command" in page and 'id="schedule-form"' not in page

    async with client(gw) as admin:
        assert (await admin.login("ada"))[0] == 200
        status, page = await admin.call("GET", "/gateway")
        assert status == 200 and "Nothing quarantined" in page and "Connected MQTT clients" in page
        assert "gateway.db" in page
    rows = gw.query("SELECT source FROM command_log WHERE device_id = 'AP-01'")
    assert rows == [("panel",)]


async def test_api_tokens_need_no_csrf_and_carry_their_role(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(extra=users_config())
    operator = {"Authorization": f"Bearer {TOKENS['script-op'][1]}"}
    viewer = {"Authorization": f"Bearer {TOKENS['script-view'][1]}"}
    async with client(gw) as c:
        assert (await c.call("GET", "/health", headers=viewer))[0] == 200
        status, text = await c.call("GET", "/metrics", headers=viewer)  # Prometheus scrapes with a token
        assert status == 200 and "gateway_" in text
        status, record = await c.call("POST", "/api/device/AP-01/command", COMMAND, headers=operator)
        assert status == 202 and record["source"] == "api"
        assert (await c.call("POST", "/api/device/AP-01/command", COMMAND, headers=viewer))[0] == 403
        assert (await c.call("GET", "/health", headers={"Authorization": "Bearer not-a-token"}))[0] == 401
        assert (await c.call("GET", "/health", headers={"Authorization": f"Basic {TOKENS['script-op'][1]}"}))[0] == 401
        # a token opens the API, not the panel's pages
        assert (await c.call("GET", "/", headers=operator))[0] == 302


async def test_loopback_anonymous_access_is_a_switch(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(extra=users_config(panel="loopback_anonymous_api = true"))
    async with client(gw) as c:
        assert (await c.call("GET", "/api/device/list/all"))[0] == 200
        status, record = await c.call("POST", "/api/device/AP-01/command", COMMAND)
        assert status == 202 and record["source"] == "api"
        assert (await c.call("GET", "/"))[0] == 302  # the panel still wants a login


async def test_failed_logins_are_limited_per_source_until_the_window_passes(gateway_factory: GatewayFactory) -> None:
    clock = ManualClock()
    gw = await gateway_factory(clock=clock, extra=users_config(panel="login_attempts = 3\nlogin_window_seconds = 60"))
    async with client(gw) as c:
        for _ in range(3):
            assert (await c.login("otto", "wrong"))[0] == 401
        async with c.http.get(f"{c.base}/login") as resp:
            assert resp.status == 200
        status, data = await c.login("otto")  # the right password does not help while limited
        assert status == 429 and "too many failed logins" in data["error"]["message"]
        async with c.http.get(f"{c.base}/login") as resp:
            token = (await resp.text()).split('data-csrf="')[1].split('"')[0]
        async with c.http.post(f"{c.base}/login", json={"name": "otto", "password": "pw-otto"},
                               headers={"X-CSRF-Token": token}) as resp:
            assert resp.status == 429 and 1 <= int(resp.headers["Retry-After"]) <= 60
        clock.advance(61)
        assert (await c.login("otto"))[0] == 200


async def test_sessions_expire_when_idle_and_at_their_maximum_age(gateway_factory: GatewayFactory) -> None:
    clock = ManualClock()
    gw = await gateway_factory(clock=clock, extra=users_config(
        panel="session_idle_minutes = 10\nsession_max_hours = 1"))
    async with client(gw) as c:
        assert (await c.login("vera"))[0] == 200
        for _ in range(6):  # used every 9 minutes: the idle limit never strikes, the maximum age does
            clock.advance(9 * 60)
            assert (await c.call("GET", "/api/device/list/all"))[0] == 200
        clock.advance(9 * 60)  # 63 minutes after the login
        assert (await c.call("GET", "/api/device/list/all"))[0] == 401
        assert (await c.login("vera"))[0] == 200
        clock.advance(11 * 60)
        assert (await c.call("GET", "/api/device/list/all"))[0] == 401
        assert (await c.call("GET", "/"))[0] == 302


async def test_logout_ends_the_session(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(extra=users_config())
    async with client(gw) as c:
        assert (await c.login("ada"))[0] == 200
        assert (await c.call("POST", "/logout", csrf=""))[0] == 403  # logging someone out is a state change too
        stolen = c.cookie("eg_session")
        status, data = await c.call("POST", "/logout")
        assert status == 200 and data == {"next": "/login"}
        assert c.cookie("eg_session") is None
        assert (await c.call("GET", "/api/device/list/all"))[0] == 401
        # the old cookie is dead on the server, not only forgotten by this browser
        status, _ = await c.call("GET", "/api/device/list/all", headers={"Cookie": f"eg_session={stolen}"})
        assert status == 401


async def test_login_redirects_back_only_within_this_server(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(extra=users_config())
    async with client(gw) as c:
        async with c.http.get(f"{c.base}/login?next=//evil.example/x") as resp:
            assert 'data-next="/"' in await resp.text()
        async with c.http.get(f"{c.base}/login?next=/device/AP-02") as resp:
            page = await resp.text()
            assert 'data-next="/device/AP-02"' in page
        token = page.split('data-csrf="')[1].split('"')[0]
        status, data = await c.call("POST", "/login", {"name": "vera", "password": "pw-vera", "next": "https://x.y/"},
                                    csrf=token)
        assert status == 200 and data["next"] == "/"


async def test_panel_over_tls_marks_its_cookies_secure(gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "panel.pem", tmp_path / "panel.key"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    gw = await gateway_factory(extra=users_config(panel=f'certfile = "{certfile}"\nkeyfile = "{keyfile}"'))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with client(gw, scheme="https", ssl_context=context) as c:
        async with c.http.get(f"{c.base}/login") as resp:
            assert resp.status == 200
            assert resp.cookies["eg_login"]["secure"]
        assert (await c.login("ada"))[0] == 200
        assert c.set_cookies["eg_session"]["secure"]
        async with c.http.get(f"{c.base}/") as resp:
            assert resp.status == 200
        status, _ = await c.call("GET", "/api/device/list/all")
        assert status == 200
    async with aiohttp.ClientSession() as plain:
        with pytest.raises(aiohttp.ClientError):
            async with plain.get(base_url(gw) + "/login") as resp:
                await resp.read()


async def test_device_pages_offer_control_only_where_the_driver_takes_commands(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(devices=("AP-01", "S-01"), kinds={"S-01": "sensor"}, extra=users_config())
    async with client(gw) as c:
        assert (await c.login("otto"))[0] == 200
        status, page = await c.call("GET", "/device/S-01")
        assert status == 200 and "takes no commands" in page and 'id="command-status"' not in page
        status, page = await c.call("GET", "/device/AP-01")
        assert status == 200 and 'id="command-status"' in page and 'id="schedule-form"' in page
        status, page = await c.call("GET", "/device/NOPE")
        assert status == 404 and "No device NOPE" in page
        status, data = await c.call("GET", "/panel/series/AP-01?span=year")
        assert status == 400 and data["error"]["field"] == "span"
        status, data = await c.call("GET", "/panel/series/AP-01?span=week")
        assert status == 200 and data["bucketSeconds"] == 1800 and data["series"]["ts"] == []


async def test_a_panel_certificate_that_does_not_load_stops_the_start_with_its_name(
        gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    certfile, keyfile = tmp_path / "panel.pem", tmp_path / "panel.key"
    certfile.write_text("not a certificate\n")
    keyfile.write_text("not a key\n")
    with pytest.raises(StartupError) as failed:
        await gateway_factory(extra=users_config(panel=f'certfile = "{certfile}"\nkeyfile = "{keyfile}"'))
    assert failed.value.phase == f"panel TLS certificate {certfile}"
