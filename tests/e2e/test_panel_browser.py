"""The panel in a real browser: Debian's headless Chromium, driven by Playwright's async API in the test's own
event loop, against a running gateway (embedded broker, SQLite, control) with simulated purifiers.

A facility manager's round: log in, watch a reading arrive live (publish -> on page latency is measured and
printed), filter by room, set a fan speed and see the purifier follow, start a pre-clean and watch its
countdown, create and edit a schedule, find the commands in the history, log out; a viewer cannot command.
The overview's first paint with 100 configured devices is measured too. Screenshots of each page at phone
and desktop width go to tests/e2e/results/ (or $PANEL_SCREENSHOTS); docs/panel/ keeps a committed set.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from firmware_sim.purifier import SimulatedPurifier, topic_for

from gateway.core.models import Quarantined, Reading
from tests.fixtures.gateway import GatewayFactory, RunningGateway, device_password
from tests.fixtures.panel import base_url, user_password, users_config
from tests.fixtures.purifiers import purifier, until

playwright_api = pytest.importorskip("playwright.async_api")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RESULTS = Path(os.environ.get("PANEL_SCREENSHOTS", Path(__file__).resolve().parent / "results"))
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
DEVICES = ["AP-01", "AP-02", "AP-03", *(f"AP-{i:03d}" for i in range(4, 100)), "S-01"]
ROOMS = {"AP-01": "Lobby", "AP-02": "Meeting room 1", "AP-03": "Lobby"}
LIVE_SAMPLES = 5


def _device_lines() -> dict[str, str]:
    return {d: f'name = "{"Sensor" if d.startswith("S") else "Purifier"} {d}"\n'
               f'room = "{ROOMS.get(d, f"Floor {int(d[-2:]) % 4 + 1}")}"' for d in DEVICES}


async def _seed_history(gw: RunningGateway, device: str) -> None:
    """A week of readings every 5 minutes (a daily rhythm), and a few quarantined messages."""
    now = gw.gateway.clock.now()
    for i in range(7 * 24 * 12, 0, -1):
        ts = now - 60.0 - i * 300.0
        day = math.sin(ts / 86_400 * 2 * math.pi)
        await gw.gateway.writer.put(Reading(device, ts, {
            "pm25": round(14 + 9 * day + 3 * math.sin(ts / 2_700), 2), "temperature": round(22 + 1.5 * day, 2),
            "humidity": round(45 - 6 * day, 1), "fanSpeed": 2, "powerOn": True}, ts))
    for reason in ("not JSON: Expecting value: line 1 column 1 (char 0)", "timestamp 1999-12-31T23:59:59Z before "
                   "ingest.earliest_timestamp", "pm25: expected a number, got 'high'"):
        await gw.gateway.writer.put(Quarantined(now, "AP-02", "device/AP-02/data", b"{}", reason, "AP-02"))
    await gw.flush()


async def _shoot(page: Any, name: str) -> None:
    """The page at desktop width (full length) and at phone width (its first two screens), then back."""
    for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
        await page.set_viewport_size(size)
        await page.wait_for_timeout(150)  # a re-layout (charts resize on the window's resize event)
        clip = None if label == "desktop" else {"x": 0, "y": 0, "width": size["width"], "height": 2 * size["height"]}
        await page.screenshot(path=str(RESULTS / f"{name}-{label}.png"), full_page=True, clip=clip)
    await page.set_viewport_size(DESKTOP)


async def _login(page: Any, base: str, name: str, target: str = "/") -> None:
    await page.goto(base + target)
    assert "/login" in page.url
    await page.get_by_label("Name").fill(name)
    await page.get_by_label("Password").fill(user_password(name))
    await page.get_by_label("Password").press("Enter")  # the keyboard submits the form
    await page.wait_for_url(base + target)


async def _first_paint_ms(page: Any, url: str) -> tuple[float, float]:
    """(server response end, first contentful paint), in ms from the navigation's start."""
    await page.goto(url)
    return tuple(await page.evaluate("""() => new Promise((resolve) => {
        const nav = performance.getEntriesByType("navigation")[0];
        new PerformanceObserver((list) => {
            const fcp = list.getEntriesByName("first-contentful-paint")[0];
            if (fcp) resolve([nav.responseEnd, fcp.startTime]);
        }).observe({type: "paint", buffered: true});
    })"""))  # type: ignore[return-value]


async def _live_latency_ms(page: Any, gw_port: int) -> list[float]:
    """A reading published by a device (its own MQTT client, QoS 0) until its value is on the page."""
    await page.evaluate("""() => {
        window.seenAt = {};
        const cell = document.querySelector('tr[data-device="AP-03"] [data-field="pm25"]');
        new MutationObserver(() => { window.seenAt[cell.textContent] = Date.now(); })
            .observe(cell, {childList: true, characterData: true, subtree: true});
    }""")
    model = SimulatedPurifier(device_id="AP-03", password=None).model
    samples = []
    async with aiomqtt.Client("127.0.0.1", gw_port, identifier="AP-03", username="AP-03",
                              password=device_password("AP-03")) as client:
        for i in range(LIVE_SAMPLES):
            value = 700.0 + i + 0.5
            reading = {**model.reading(time.time()), "pm25": value}
            published = time.time() * 1000
            await client.publish(topic_for("AP-03", "data"), json.dumps(reading), qos=0)
            text = f"{value:.1f}"
            await page.wait_for_function(f"() => window.seenAt[{json.dumps(text)}] !== undefined", timeout=5000)
            samples.append(await page.evaluate(f"() => window.seenAt[{json.dumps(text)}]") - published)
    return samples


async def _text_is(page: Any, element: str, text: str) -> None:
    """Wait until the element (a JavaScript expression) shows exactly this text."""
    await page.wait_for_function(f"() => ({element}).textContent === {json.dumps(text)}")


@pytest.fixture
def browser_ready() -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: ./install.sh --dev installs Debian's chromium package")
    RESULTS.mkdir(parents=True, exist_ok=True)


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.usefixtures("browser_ready")
async def test_a_facility_manager_runs_the_building_from_the_panel(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(devices=DEVICES, kinds={"S-01": "sensor"}, device_lines=_device_lines(),
                               extra=users_config(panel="keepalive_seconds = 2"))
    base = base_url(gw)
    await _seed_history(gw, "AP-01")
    async with purifier(gw, "AP-01", interval=3600.0, fan_speed=1) as sim, \
            purifier(gw, "AP-02", interval=3600.0), playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(viewport=DESKTOP)
            page = await context.new_page()
            page.on("dialog", lambda dialog: dialog.accept())
            errors: list[str] = []
            context.on("weberror", lambda error: errors.append(str(error.error)))
            await page.goto(base + "/login")
            await _shoot(page, "login")
            baseline = []  # the login page: the same stylesheet, a handful of elements
            for _ in range(3):
                tab = await context.new_page()
                baseline.append((await _first_paint_ms(tab, base + "/login"))[1])
                await tab.close()
            await _login(page, base, "ada")

            # --- overview: first paint with 100 devices, live readings, room filter, offline rows
            paints = []
            for _ in range(3):  # each in a new tab: no paint holding from the page before
                tab = await context.new_page()
                paints.append(await _first_paint_ms(tab, base + "/"))
                await tab.close()
            response_ms = statistics.median(p[0] for p in paints)
            paint_ms = statistics.median(p[1] for p in paints)
            rows = page.locator("#devices tbody tr")
            assert await rows.count() == 100
            await page.wait_for_selector("#live-status[data-state='live']")
            latencies = await _live_latency_ms(page, gw.port)
            assert "offline" in (await page.get_attribute('tr[data-device="AP-050"]', "class") or "")
            assert "online" in (await page.get_attribute('tr[data-device="AP-01"]', "class") or "")
            await page.get_by_label("Room").select_option("Lobby")
            assert await page.locator("#devices tbody tr:visible").count() == 2
            assert "room=Lobby" in page.url
            await page.get_by_label("Room").select_option("")
            await _shoot(page, "overview")

            # --- device: fan speed, pre-clean with countdown, schedule, history
            await page.get_by_role("link", name="Purifier AP-01", exact=True).click()
            await page.wait_for_url(base + "/device/AP-01")
            await page.locator('figure[data-metric="pm25"] canvas').wait_for()  # a chart of the last hour
            await page.get_by_role("button", name="Last day").click()
            await page.wait_for_selector('button[data-span="day"][aria-pressed="true"]')
            await page.get_by_role("button", name="Fan speed 3").click()
            await page.wait_for_selector("#command-status[data-state='acked']")
            await until(sim, lambda: sim.model.fan_speed == 3)
            await _text_is(page, "document.getElementById('reported-fan')", "3")

            await page.get_by_label("Pre-clean speed").select_option("5")
            await page.get_by_label("Duration (minutes)").fill("15")
            await page.get_by_role("button", name="Start").click()
            countdown = page.locator("#preclean-countdown")
            first = await countdown.text_content()
            assert first is not None and first.startswith(("15:00", "14:5"))
            await page.wait_for_function(f"() => document.getElementById('preclean-countdown').textContent !== "
                                         f"{json.dumps(first)}")
            await until(sim, lambda: sim.model.fan_speed == 5)

            form = page.locator("#schedule-form")
            for day in ("Mon", "Wed"):
                await form.get_by_label(day).check()
            await form.get_by_label("From", exact=True).fill("07:00")
            await form.get_by_label("To", exact=True).fill("09:30")
            await form.get_by_label("Schedule speed").select_option("2")
            await page.get_by_role("button", name="Add schedule").click()
            row = page.locator("#schedules tbody tr[data-schedule]")
            await row.first.wait_for()
            assert await row.count() == 1
            assert await page.locator("svg#week rect.window").count() == 2
            schedule_id = await row.first.get_attribute("data-schedule")
            await page.get_by_role("button", name=f"Edit schedule {schedule_id}").click()
            await form.get_by_label("Schedule speed").select_option("4")
            await page.get_by_role("button", name="Save schedule").click()
            await _text_is(page, "document.querySelector('#schedules tbody tr[data-schedule] td:nth-child(4)')", "4")
            schedules = gw.gateway.controller.schedules_for("AP-01")
            assert [(s.fan_speed, s.start.hour, s.end.minute) for s in schedules] == [(4, 7, 30)]

            history = page.locator("#history tbody")
            await page.wait_for_function("() => [...document.querySelectorAll('#history tbody tr')]"
                                         ".some(r => r.textContent.includes('fan speed 3'))")
            text = await history.inner_text()
            assert "panel" in text and "acked" in text
            await page.get_by_role("button", name="Cancel pre-clean").click()
            await _text_is(page, "document.getElementById('preclean-state')", "Not running.")
            await _shoot(page, "device")

            # --- the live stream drops: the page says it is stale, then reconnects by itself
            assert gw.gateway.api is not None and gw.gateway.api._runner is not None
            server = gw.gateway.api._runner.server
            assert server is not None
            for connection in server.connections:  # every connection cut, as a network outage would
                assert connection.transport is not None
                connection.transport.abort()
            await page.wait_for_selector("#live-status[data-state='stale']", timeout=10_000)
            assert "Stale since" in (await page.locator("#live-status").text_content() or "")
            await page.wait_for_selector("#live-status[data-state='live']", timeout=10_000)

            # --- gateway page (an admin sees the details), then log out
            await page.get_by_role("link", name="Gateway").click()
            await page.wait_for_url(base + "/gateway")
            assert await page.locator("#clients").text_content() == "2"
            assert await page.locator("#quarantine tbody tr").count() == 3
            await _shoot(page, "gateway")
            await page.goto(base + "/device/S-01")  # a sensor: readings and charts, no controls
            await page.get_by_text("takes no commands").wait_for()
            assert await page.locator("#command-status").count() == 0
            await page.wait_for_selector("#live-status[data-state='live']")
            assert errors == [], errors  # no script failed on any page
            await page.get_by_role("button", name="Log out").click()
            await page.wait_for_url(base + "/login")
            await page.goto(base + "/")
            assert "/login" in page.url
            await context.close()

            # --- a viewer sees, and cannot command (the buttons are off and the API says no)
            context = await browser.new_context(viewport=DESKTOP)
            page = await context.new_page()
            await _login(page, base, "vera", "/device/AP-02")
            assert await page.get_by_role("button", name="Fan speed 4").is_disabled()
            assert await page.locator("#schedule-form").count() == 0
            status = await page.evaluate("""async () => (await fetch('/api/device/AP-02/command', {method: 'POST',
                headers: {'Content-Type': 'application/json',
                          'X-CSRF-Token': document.querySelector('meta[name=csrf-token]').content},
                body: JSON.stringify({action: 'turnOff'})})).status""")
            assert status == 403
            await page.get_by_role("button", name="Log out").click()
            await page.wait_for_url(base + "/login")
            await context.close()
        finally:
            await browser.close()
    print(f"\npanel: overview with 100 devices (median of 3): response {response_ms:.0f} ms, first contentful "
          f"paint {paint_ms:.0f} ms from the request (the login page's: {statistics.median(baseline):.0f} ms)")
    print(f"panel: reading published -> on the page: median {statistics.median(latencies):.0f} ms, "
          f"max {max(latencies):.0f} ms ({len(latencies)} readings)")
    print(f"panel: screenshots in {RESULTS}")
