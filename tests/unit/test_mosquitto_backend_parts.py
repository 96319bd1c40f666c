"""The Mosquitto backend's pure parts: its password format, config files, log parsing, config validation."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from gateway.broker.mosquitto import config_files as files
from gateway.broker.mosquitto.connection_log import Connected, Ended, Subscribed, parse_line
from gateway.core.errors import ConfigError
from gateway.core.passwords_mosquitto import (
    hash_password_mosquitto,
    mosquitto_hash_problem,
    verify_password_mosquitto,
)
from gateway.settings import load_settings
from gateway.settings_broker import BrokerSection
from tests.fixtures.gateway import write_config

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")


def test_our_hash_verifies_and_is_well_formed() -> None:
    h = hash_password_mosquitto("s3cret", iterations=50)
    assert h.startswith("$7$50$")
    assert mosquitto_hash_problem(h) is None
    assert verify_password_mosquitto(h, "s3cret")
    assert not verify_password_mosquitto(h, "s3cret!")


@pytest.mark.skipif(MOSQUITTO_PASSWD is None, reason="no mosquitto_passwd")
def test_the_format_is_the_one_mosquitto_passwd_writes(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    subprocess.run([str(MOSQUITTO_PASSWD), "-c", "-b", str(path), "AP-01", "pw-1"], check=True, capture_output=True)
    theirs = path.read_text().strip().split(":", 1)[1]
    assert mosquitto_hash_problem(theirs) is None
    assert verify_password_mosquitto(theirs, "pw-1")  # same PBKDF2-SHA512, salt and digest encoding


@pytest.mark.parametrize(("value", "problem"), [
    ("$argon2id$v=19$m=8,t=1,p=1$abc$def", "must be a Mosquitto PBKDF2 hash"),
    ("$7$0$AAAAAAAAAAAAAAAA$" + "A" * 88, "0 iterations"),
    ("$7$101$AAAA$" + "A" * 88, "salt of 3 bytes"),
    ("$7$101$AAAAAAAAAAAAAAAA$AAAA", "hash of 3 bytes"),
    ("$7$101$AAAAAAAAAAAAAAA$" + "A" * 88, "not base64"),
])
def test_malformed_hashes_are_named(value: str, problem: str) -> None:
    assert problem in (mosquitto_hash_problem(value) or "")


def test_the_config_sets_the_limits_and_listeners_explicitly(tmp_path: Path) -> None:
    broker = BrokerSection.model_validate({"listeners": [{"name": "lan", "host": "0.0.0.0", "port": 1883}]})
    conf = files.mosquitto_conf(broker, tmp_path, files.IngestEndpoint(tmp_path / "s.sock", 0), [1883])
    lines = conf.splitlines()
    for expected in ("max_queued_messages 0", "max_inflight_messages 1000", "persistence true",
                     "allow_anonymous false", f"listener 0 {tmp_path / 's.sock'}", "listener 1883 0.0.0.0",
                     "connection_messages true", "log_type subscribe", "log_timestamp false"):
        assert expected in lines
    # a listener option before any `listener` line would make Mosquitto add a listener on 1883 of its own
    assert lines.index("use_username_as_clientid true") > lines.index("listener 1883 0.0.0.0")


def test_a_long_state_dir_falls_back_to_a_loopback_port(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 120)
    endpoint = files.ingest_endpoint(deep, 40000)
    assert (endpoint.socket_path, endpoint.port) == (None, 40000)
    assert endpoint.config_line() == "listener 40000 127.0.0.1"


def test_acl_gives_each_device_its_contract_topics_and_the_gateway_all() -> None:
    acl = files.acl_file({"AP-01": "$7$x", "AP-02": None}, allow_anonymous=False).splitlines()
    for channel in ("data", "ack", "status", "batch"):
        assert f"pattern write device/%u/{channel}" in acl
        assert f"topic read device/+/{channel}" in acl
    assert "pattern read device/%u/command" in acl
    assert "topic write device/+/command" in acl
    assert not any("AP-02" in line for line in acl)  # nothing for anonymous clients while anonymous is off
    anonymous = files.acl_file({"AP-01": "$7$x", "AP-02": None}, allow_anonymous=True).splitlines()
    first_user = anonymous.index(f"user {files.GATEWAY_USER}")
    assert "topic write device/AP-02/data" in anonymous[:first_user]  # only the device without a password
    assert not any("AP-01" in line for line in anonymous)


def test_the_password_file_has_the_gateway_and_devices_with_a_hash() -> None:
    text = files.password_file({"AP-01": "$7$1$a$b", "AP-02": None}, "$7$1$g$h")
    assert text.splitlines() == [f"{files.GATEWAY_USER}:$7$1$g$h", "AP-01:$7$1$a$b"]


def test_files_are_written_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "acl"
    path.write_text("old")
    path.chmod(0o644)
    files.write_private(path, "new\n")
    assert path.read_text() == "new\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(("line", "event"), [
    ("New client connected from 127.0.0.1:50499 as AP-01 (p2, c1, k60, u'AP-01').", Connected("AP-01", "AP-01", True)),
    ("New client connected from /x/ingest.sock:0 as _gateway (p2, c0, k30, u'_gateway').",
     Connected("_gateway", "_gateway", False)),
    ("New client connected from 127.0.0.1:1 as anon-1 (p2, c1, k60).", Connected("anon-1", "anon-1", True)),
    ("Client AP-01 closed its connection.", Ended("AP-01")),
    ("Client AP-01 disconnected.", Ended("AP-01")),
    ("Client AP-01 has exceeded timeout, disconnecting.", Ended("AP-01")),
    ("Client AP-01 disconnected due to protocol error.", Ended("AP-01")),
    ("Socket error on client AP-01, disconnecting.", Ended("AP-01")),
    ("Bad socket read/write on client AP-01: Unknown error.", Ended("AP-01")),
    ("Client AP-01 already connected, closing old connection.", None),  # a takeover: still connected
    ("Client <unknown> disconnected, not authorised.", Ended("<unknown>")),
    ("AP-01 1 device/AP-01/command", Subscribed("AP-01", "device/AP-01/command")),
    ("Opening ipv4 listen socket on port 1883.", None),
    ("New connection from 127.0.0.1:50499 on port 1883.", None),
])
def test_connection_log_lines(line: str, event: object) -> None:
    assert parse_line(line) == event


def test_the_mosquitto_backend_is_accepted_and_needs_mosquitto_hashes(tmp_path: Path) -> None:
    loaded = load_settings(write_config(tmp_path, backend="mosquitto"))
    assert loaded.settings.broker.backend == "mosquitto"
    text = (tmp_path / "gateway.toml").read_text()
    no_hashes = "\n".join(line for line in text.splitlines() if not line.startswith("password_hash_mosquitto"))
    (tmp_path / "gateway.toml").write_text(no_hashes)
    with pytest.raises(ConfigError) as failed:
        load_settings(tmp_path / "gateway.toml")
    assert any("devices.0[id=AP-01].password_hash_mosquitto: required" in e for e in failed.value.errors), failed.value


def test_a_bad_mosquitto_hash_is_refused_with_its_path(tmp_path: Path) -> None:
    path = write_config(tmp_path, backend="mosquitto")
    path.write_text(path.read_text().replace('_mosquitto = "$7$10$', '_mosquitto = "$8$10$', 1))
    with pytest.raises(ConfigError) as failed:
        load_settings(path)
    assert "devices.0[id=AP-01].password_hash_mosquitto: must be a Mosquitto PBKDF2 hash" in "\n".join(
        failed.value.errors)


def test_a_device_id_with_a_colon_is_refused_on_mosquitto(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as failed:
        load_settings(write_config(tmp_path, devices=["AP-01", "AP:02"], backend="mosquitto"))
    assert "devices.1[id=AP:02].id: a device id with ':' cannot log in to Mosquitto" in "\n".join(
        failed.value.errors)


def test_the_embedded_backend_ignores_mosquitto_hashes_and_needs_argon2(tmp_path: Path) -> None:
    path = write_config(tmp_path, backend="mosquitto")
    path.write_text(path.read_text().replace('backend = "mosquitto"', 'backend = "embedded"'))
    assert load_settings(path).settings.broker.backend == "embedded"


def test_hash_password_for_mosquitto_prints_mosquittos_form(capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    assert main(["hash-password", "--for", "mosquitto", "--password", "pw-1"]) == 0
    printed = capsys.readouterr().out.strip()
    assert mosquitto_hash_problem(printed) is None and verify_password_mosquitto(printed, "pw-1")
    assert main(["hash-password", "--password", "pw-1"]) == 0  # the default stays argon2
    assert capsys.readouterr().out.startswith("$argon2id$")
