"""The operator's commands against real gateways and databases: status, device add, backup, export."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.cli.common import EXAMPLE_CONFIG
from gateway.core.models import Reading
from gateway.core.passwords import verify_password
from gateway.settings import load_settings
from tests.fixtures.gateway import GatewayFactory, RunningGateway, wait_for, write_config
from tests.fixtures.purifiers import purifier


def _json_out(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    """The command's JSON line (the gateway under test logs to stdout as well: structlog's default)."""
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith('{"gatewayId"')]
    data: dict[str, object] = json.loads(line)
    return data


def _text_out(capsys: pytest.CaptureFixture[str]) -> str:
    out = capsys.readouterr().out
    return out[out.index("gateway gw-test: "):]


async def test_status_of_a_running_gateway_comes_from_its_api(
    gateway_factory: GatewayFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = await gateway_factory(devices=["AP-01", "AP-02"])
    assert gw.gateway.api is not None
    url = f"http://127.0.0.1:{gw.gateway.api.port}"
    async with purifier(gw, "AP-01"):
        code = await asyncio.to_thread(main, ["status", "--config", str(gw.config_path), "--url", url, "--json"])
        status = _json_out(capsys)
        assert code == 0
        assert status["running"] is True and status["source"] == f"{url}/health"
        assert (status["gatewayId"], status["devices"], status["devicesOnline"]) == ("gw-test", 2, 1)
        assert status["cloud"] is None
        code = await asyncio.to_thread(main, ["status", "--config", str(gw.config_path), "--url", url])
    text = _text_out(capsys)
    assert code == 0
    assert text.startswith("gateway gw-test: running, version ")
    assert "devices: 2 configured, 1 online\n" in text and "cloud: off" in text


async def test_status_without_a_running_gateway_comes_from_its_database(
    gateway_factory: GatewayFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = await gateway_factory(devices=["AP-01", "AP-02"])
    async with purifier(gw, "AP-01"):
        pass
    await gw.stop()
    # The same gateway's config with the cloud link on: what waits in its outbox is the backlog.
    config = write_config(gw.config_path.parent, devices=["AP-01", "AP-02"],
                          extra='[uplink]\nenabled = true\nhost = "127.0.0.1"\nport = 1\ntls = false')
    with sqlite3.connect(gw.db_path) as conn:
        conn.executemany("INSERT INTO outbox (kind, device_id, ts, body, size, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                         [("telemetry", "AP-01", 1.0, "{}", 2, 1_764_763_200.0),
                          ("telemetry", "AP-01", 2.0, "{}", 2, 1_764_763_260.0)])
        online = conn.execute("SELECT sum(online) FROM device_state").fetchone()[0]
        (last_device,) = conn.execute("SELECT device_id FROM readings ORDER BY id DESC LIMIT 1").fetchone()
    # nothing listens at --url: the API's port was closed with the gateway
    args = ["status", "--config", str(config), "--url", "http://127.0.0.1:9", "--timeout", "1"]
    assert await asyncio.to_thread(main, [*args, "--json"]) == 3
    status = _json_out(capsys)
    assert status["running"] is False and status["source"] == str(gw.db_path)
    assert status["devicesOnline"] == online
    assert status["cloud"] == {"backlog": 2, "oldestUnsent": 1_764_763_200.0}
    assert await asyncio.to_thread(main, args) == 3
    text = _text_out(capsys)
    assert "not answering at http://127.0.0.1:9" in text
    assert f"from {last_device}" in text
    assert "cloud: 2 waiting; in sync up to 2025-12-03T12:00:00Z" in text


def test_status_needs_a_readable_database_when_the_api_is_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, api="enabled = false")
    assert main(["status", "--config", str(config)]) == 1
    assert "no database at" in capsys.readouterr().err


def test_device_add_appends_a_table_and_keeps_every_comment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.toml"
    original = EXAMPLE_CONFIG.read_text()
    config.write_text(original)
    config.chmod(0o640)
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret-hall\n"))
    assert main(["device", "add", "AP-04", "--config", str(config), "--password-stdin",
                 "--name", 'Hall "east"', "--room", "Hall"]) == 0
    text = config.read_text()
    # every line and comment as it was; the new table right after the last device, before the comments that
    # introduce the next section
    added = text.index('[[devices]]\nid = "AP-04"\n')
    table_end = text.index("\n\n", added) + 1
    assert text[:added - 1] + text[table_end:] == original
    assert text.index("[[devices]]\nid = \"AP-03\"") < added < text.index("# BLE sensors")
    assert (config.stat().st_mode & 0o777) == 0o640
    device = load_settings(config).settings.device("AP-04")
    assert device is not None and (device.kind, device.name, device.room) == ("purifier", 'Hall "east"', "Hall")
    assert device.password_hash and verify_password(device.password_hash, "s3cret-hall")
    assert main(["check-config", str(config)]) == 0
    capsys.readouterr()

    # refused, and the file left as it is: a repeated id, a kind no driver knows, the demo's password
    for argv, line in ((["AP-04"], "s3cret\n"), (["AP-05", "--kind", "fridge"], "s3cret\n"),
                       (["AP-06"], "demo-AP-06\n")):
        monkeypatch.setattr("sys.stdin", io.StringIO(line))
        assert main(["device", "add", *argv, "--config", str(config), "--password-stdin"]) != 0
        assert config.read_text() == text
    err = capsys.readouterr().err
    assert "device 'AP-04' is already configured" in err
    assert "devices.4[id=AP-05].kind: unknown device kind 'fridge'" in err
    assert "the demo's published password" in err
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_device_add_to_a_production_config_without_devices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.toml"
    assert main(["init-config", "--data-dir", str(tmp_path / "state"), str(config)]) == 0
    before = config.read_text()
    monkeypatch.setattr("sys.stdin", io.StringIO("pw-1\n"))
    assert main(["device", "add", "lobby-1", "--config", str(config), "--password-stdin"]) == 0
    after = config.read_text()
    # below the note on [[devices]] tables, every other line as it was
    note_end = after.index("left out of this file.)\n") + len("left out of this file.)\n")
    assert after.startswith('[[devices]]\nid = "lobby-1"\n', note_end + 1)
    assert after[:note_end] + after[after.index("\n\n", note_end + 1) + 1:] == before
    assert [d.id for d in load_settings(config).settings.devices] == ["lobby-1"]
    assert main(["check-config", "--production", str(config)]) == 0
    capsys.readouterr()


async def _write_readings(gw: RunningGateway, device_id: str, stop: asyncio.Event) -> int:
    n = 0
    while not stop.is_set():
        now = gw.gateway.clock.now()
        await gw.gateway.writer.put(Reading(device_id, now, {"pm25": float(n)}, received_at=now))
        n += 1
        if n % 50 == 0:
            await asyncio.sleep(0.001)
    return n


def _committed(gw: RunningGateway) -> int:
    return int(gw.counter("gateway_readings_committed_total"))


async def test_backup_copies_a_consistent_database_while_the_gateway_writes(
    gateway_factory: GatewayFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = await gateway_factory(devices=["AP-01"])
    stop = asyncio.Event()
    writing = asyncio.create_task(_write_readings(gw, "AP-01", stop))
    try:
        await wait_for(lambda: _committed(gw) >= 2_000, timeout=20)
        before = _committed(gw)
        target = tmp_path / "backup.db"
        code = await asyncio.to_thread(main, ["backup", str(target), "--config", str(gw.config_path)])
        at_end = _committed(gw)
        await wait_for(lambda: _committed(gw) >= at_end + 500, timeout=20)  # it goes on writing as before
    finally:
        stop.set()
        await writing
    assert code == 0, capsys.readouterr().err
    assert "readings)" in capsys.readouterr().out
    with sqlite3.connect(target) as copy:
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert copy.execute("PRAGMA journal_mode").fetchone() == ("delete",)  # one self-contained file
        (count,) = copy.execute("SELECT count(*) FROM readings").fetchone()
        ids = [row[0] for row in copy.execute("SELECT id FROM readings ORDER BY id")]
    assert before <= count <= at_end  # one snapshot taken during the run
    assert ids == list(range(ids[0], ids[0] + count))  # a consistent prefix: no reading missing in between
    assert not target.with_name(".backup.db.partial").exists()
    # an existing file is not replaced without --force
    assert await asyncio.to_thread(main, ["backup", str(target), "--config", str(gw.config_path)]) == 1
    assert "--force" in capsys.readouterr().err


async def test_export_writes_csv_and_json_lines_for_a_range_and_devices(
    gateway_factory: GatewayFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = await gateway_factory(devices=["AP-01", "AP-02"])
    for ts in range(1_000, 1_010):
        await gw.gateway.writer.put(Reading("AP-01", float(ts), {"pm25": ts / 10, "powerOn": ts % 2 == 0},
                                            received_at=ts + 0.5))
        await gw.gateway.writer.put(Reading("AP-02", ts + 0.25, {"co2": ts}, received_at=ts + 0.5))
    await gw.flush()
    base = ["export", "--config", str(gw.config_path)]

    out = tmp_path / "r.csv"
    # [1970-01-01T00:16:42Z, 1005): ts 1002.0 up to 1004.25, both devices
    assert main([*base, "--since", "1970-01-01T00:16:42", "--until", "1005", "-o", str(out)]) == 0
    assert "exported 6 readings" in capsys.readouterr().err
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["deviceId", "time", "ts", "receivedAt", "co2", "pm25", "powerOn"]
    assert [(r["deviceId"], float(r["ts"])) for r in rows] == [
        ("AP-01", 1002.0), ("AP-02", 1002.25), ("AP-01", 1003.0), ("AP-02", 1003.25), ("AP-01", 1004.0),
        ("AP-02", 1004.25)]
    assert rows[0] | {"receivedAt": ""} == {"deviceId": "AP-01", "time": "1970-01-01T00:16:42.000Z", "ts": "1002.0",
                                            "receivedAt": "", "co2": "", "pm25": "100.2", "powerOn": "true"}
    assert (rows[1]["co2"], rows[1]["pm25"], rows[1]["powerOn"]) == ("1002", "", "")

    # JSON Lines, one device, an offset in --since, open end
    assert main([*base, "--format", "jsonl", "--device", "AP-02", "--since", "1970-01-01T01:16:48+01:00"]) == 0
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [line["ts"] for line in lines] == [1008.25, 1009.25]
    assert lines[0] == {"deviceId": "AP-02", "time": "1970-01-01T00:16:48.250Z", "ts": 1008.25,
                        "receivedAt": 1008.5, "metrics": {"co2": 1008}}
    assert "exported 2 readings" in captured.err

    assert main([*base, "--device", "nobody", "-o", str(out)]) == 0
    assert out.read_text() == "deviceId,time,ts,receivedAt\n"
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([*base, "--since", "yesterday"])
    assert "not an ISO-8601 time or epoch seconds: 'yesterday'" in capsys.readouterr().err
