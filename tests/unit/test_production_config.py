"""A production config never carries the demo's credentials: init-config, the daemon's refusal, check-config."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.cli import main
from gateway.cli.common import EXAMPLE_CONFIG, EXIT_CONFIG
from gateway.cli.demo_config import demo_settings
from gateway.cli.toml_writer import dumps
from gateway.core.errors import ConfigError
from gateway.core.passwords import hash_password, verify_password
from gateway.demo_credentials import demo_password_hash, is_demo_hash
from gateway.settings import load_settings
from tests.fixtures.gateway import write_config


def test_demo_hashes_are_recognised_from_the_hash_alone() -> None:
    for device_id in ("AP-01", "AP-42", "lobby.1"):
        demo = demo_password_hash(device_id)
        assert verify_password(demo, f"demo-{device_id}")
        assert is_demo_hash(demo)
        assert demo == demo_password_hash(device_id)  # the same string every run: the demo config is stable
    assert not is_demo_hash(hash_password("demo-AP-01"))  # a hash with a random salt is the installer's own
    assert not is_demo_hash("$argon2id$garbage")
    # every demo device of the example config is recognised
    example = load_settings(EXAMPLE_CONFIG).settings
    assert all(d.password_hash and is_demo_hash(d.password_hash) for d in example.devices)


def test_run_refuses_the_example_config_with_every_demo_credential_named(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "gateway", "run", "--config", str(EXAMPLE_CONFIG)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "NOTIFY_SOCKET": ""})
    assert done.returncode == EXIT_CONFIG
    lines = done.stderr.strip().splitlines()
    assert f"{EXAMPLE_CONFIG}: gateway.id: 'gw-demo-01' is the demo's gateway id" in lines
    for index, device_id in enumerate(("AP-01", "AP-02", "AP-03")):
        assert any(line.startswith(f"{EXAMPLE_CONFIG}: devices.{index}[id={device_id}].password_hash: a demo password")
                   for line in lines), lines
    assert "demo credentials are for `edge-gateway demo` only" in lines[-1]
    assert not (tmp_path / "var").exists()  # refused before anything was opened


async def test_the_gateway_refuses_demo_credentials_unless_it_is_the_demo() -> None:
    example = load_settings(EXAMPLE_CONFIG)
    with pytest.raises(ConfigError):
        Gateway(example)
    Gateway(example, demo=True)  # the demo runs on them


async def test_a_reload_onto_demo_credentials_keeps_the_running_config(tmp_path: Path) -> None:
    config = write_config(tmp_path, devices=["AP-01"])
    gateway = Gateway(load_settings(config))
    text = config.read_text()
    config.write_text(re.sub(r'password_hash = "[^"]*"', f'password_hash = "{demo_password_hash("AP-01")}"', text))
    assert gateway.reload() is False
    assert gateway.loaded.settings.devices[0].password_hash != demo_password_hash("AP-01")


def test_check_config_production_fails_on_demo_credentials(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(EXAMPLE_CONFIG)]) == 0  # valid: the demo's config
    assert "demo credentials" in capsys.readouterr().err
    assert main(["check-config", "--production", str(EXAMPLE_CONFIG)]) == EXIT_CONFIG


def test_init_config_writes_the_example_with_a_new_id_a_data_dir_and_no_devices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "etc" / "gateway.toml"
    target.parent.mkdir()
    assert main(["init-config", "--data-dir", str(tmp_path / "state"), str(target)]) == 0
    text = target.read_text()
    loaded = load_settings(target)
    s = loaded.settings
    assert re.fullmatch(r"gw-[0-9a-f]{8}", s.gateway.id)
    assert s.devices == []
    assert loaded.data_dir == tmp_path / "state"  # whatever the current directory
    assert (target.stat().st_mode & 0o777) == 0o640
    settings = [line for line in text.splitlines() if not line.lstrip().startswith("#")]  # comments aside
    assert "demo-AP" not in text and not [line for line in settings if "argon2" in line or "[[users]]" in line]
    assert s.users == []
    assert text.count("#") > 30  # the example's comments came along
    assert f"edge-gateway device add AP-01 --config {target}" in text
    assert main(["check-config", "--production", str(target)]) == 0
    # never over an existing file; a second config gets another id
    assert main(["init-config", str(target)]) == 1
    other = tmp_path / "other.toml"
    assert main(["init-config", str(other)]) == 0
    assert load_settings(other).settings.gateway.id != s.gateway.id
    capsys.readouterr()


def test_unknown_keys_get_a_did_you_mean_with_their_field_path(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[gateway]\nid = "g"\norg = "o"\n[storage]\nsynchronus = "FULL"\n'
                    '[[broker.listeners]]\nname = "lan"\nprot = 1883\n'
                    '[[devices]]\nid = "AP-01"\npasword_hash = "x"\n[gatway]\n[api]\nzzz = 1\n', encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert sorted(err.value.errors) == sorted([
        f"{path}: storage.synchronus: Extra inputs are not permitted (did you mean 'synchronous'?)",
        f"{path}: broker.listeners.0.prot: Extra inputs are not permitted (did you mean 'port'?)",
        f"{path}: devices.0[id=AP-01].pasword_hash: Extra inputs are not permitted (did you mean 'password_hash'?)",
        f"{path}: gatway: Extra inputs are not permitted (did you mean 'gateway'?)",
        f"{path}: api.zzz: Extra inputs are not permitted",  # nothing close: no guess
    ])


def test_the_toml_writer_round_trips_settings(tmp_path: Path) -> None:
    base = load_settings(EXAMPLE_CONFIG)
    settings = demo_settings(base, devices=5, mqtt_port=11883, api_port=18080)
    path = tmp_path / "out.toml"
    path.write_text(dumps(settings.model_dump(mode="json", exclude_defaults=True, exclude_none=True)))
    assert load_settings(path).settings == settings
    awkward = {"t": {"s": 'quote " backslash \\ tab \t del \x7f é', "n": [1, 2.5, True], "x y": 1}}
    assert tomllib.loads(dumps(awkward)) == awkward


def test_demo_settings_derive_the_simulators_ids_and_passwords() -> None:
    settings = demo_settings(load_settings(EXAMPLE_CONFIG), devices=12, mqtt_port=None, api_port=None)
    assert [d.id for d in settings.devices] == [f"AP-{n:02d}" for n in range(1, 13)]
    assert settings.devices[0].name == "Lobby purifier"  # the example's own devices are kept
    for device in (settings.devices[0], settings.devices[11]):
        assert device.password_hash and verify_password(device.password_hash, f"demo-{device.id}")


