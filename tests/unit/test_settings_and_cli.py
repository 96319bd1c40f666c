"""Config validation and the check-config / hash-password commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.__main__ import EXAMPLE_CONFIG, main
from gateway.core.errors import ConfigError
from gateway.core.passwords import verify_password
from gateway.settings import load_settings

GOOD_HASH = "$argon2id$v=19$m=1024,t=1,p=1$c29tZXNhbHQ$9sTbSlTio3Biev89thdrlKKiCaYsjjYVJxGAL3swxpQ"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gw.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_example_config_is_valid_and_documented() -> None:
    loaded = load_settings(EXAMPLE_CONFIG)
    s = loaded.settings
    assert [d.id for d in s.devices] == ["AP-01", "AP-02", "AP-03"]
    assert s.broker.allow_anonymous is False
    # the demo passwords documented in the example match its hashes
    for device in s.devices:
        assert device.password_hash and verify_password(device.password_hash, f"demo-{device.id}")
    assert EXAMPLE_CONFIG.read_text().count("#") > 30  # commented for installers


def test_check_config_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(EXAMPLE_CONFIG)]) == 0
    assert "OK" in capsys.readouterr().out


def test_check_config_lists_every_error_with_file_and_field_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, f"""
[gateway]
id = "gw 1"
org = "o"
timezone = "Mars/Olympus"

[broker]
keepalive_grace = 0.5
[[broker.listeners]]
name = "lan"
port = 70000
[[broker.listeners]]
name = "tls"
certfile = "/nonexistent/cert.pem"

[storage]
synchronus = "FULL"

[[devices]]
id = "AP-01"
password_hash = "plain-text-password"
[[devices]]
id = "AP/02"
password_hash = "{GOOD_HASH}"
""")
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    expected = [
        f"{path}: gateway.id: String should match pattern",
        f"{path}: gateway.timezone: unknown timezone 'Mars/Olympus'",
        f"{path}: broker.listeners.0.port: Input should be less than or equal to 65535",
        f"{path}: broker.listeners.1: certfile and keyfile go together",
        f"{path}: broker.keepalive_grace: Input should be greater than or equal to 1",
        f"{path}: storage.synchronus: Extra inputs are not permitted",
        f"{path}: devices.0[id=AP-01].password_hash: must be an argon2 hash",
        f"{path}: devices.1[id=AP/02].id: String should match pattern",
    ]
    for line in expected:
        assert any(e.startswith(line) for e in err), (line, err)
    assert len(err) == len(expected)


def test_cross_section_errors_name_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
[gateway]
id = "gw1"
org = "o"
[[devices]]
id = "AP-01"
[[devices]]
id = "AP-02"
password_hash = "{GOOD_HASH}"
[[devices]]
id = "AP-02"
password_hash = "{GOOD_HASH}"
""")
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    assert exc.value.errors == [
        f"{path}: devices.0[id=AP-01].password_hash: required while broker.allow_anonymous is false",
        f"{path}: devices.2[id=AP-02].id: device id 'AP-02' appears more than once",
    ]


def test_toml_syntax_and_missing_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(write(tmp_path, "[gateway\nid=1"))
    assert exc.value.errors[0].startswith(f"{tmp_path / 'gw.toml'}: TOML syntax:")
    with pytest.raises(ConfigError) as exc:
        load_settings(tmp_path / "absent.toml")
    assert exc.value.errors == [f"{tmp_path / 'absent.toml'}: file not found"]


def test_data_dir_defaults_to_systemd_state_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[gateway]\nid = "gw1"\norg = "o"\n')
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/edge-gateway")
    assert load_settings(path).db_path == Path("/var/lib/edge-gateway/gateway.db")
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.chdir(tmp_path)
    assert load_settings(path).data_dir == tmp_path / "var"


def test_run_with_invalid_config_stops_at_start_with_the_field_path(tmp_path: Path) -> None:
    path = write(tmp_path, '[gateway]\nid = "gw1"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--config", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert f"{path}: gateway.org: Field required" in proc.stderr


def test_hash_password_prints_a_verifiable_argon2_hash() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "hash-password"], input="s3cret\n",
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    hashed = proc.stdout.strip()
    assert hashed.startswith("$argon2id$")
    assert verify_password(hashed, "s3cret") and not verify_password(hashed, "other")


@pytest.mark.parametrize(("value", "problem"), [
    ("$argon2id$garbage", "not a complete argon2 hash"),
    ("$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$!!!!", "argon2 hash is not base64"),
    ("$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$RdescudvJCsgt3ub+b+dWRWJTmaaJObG", "argon2 salt of 4 bytes"),
    ("$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$c2hvcnQ", "argon2 hash of 5 bytes"),
    ("$argon2id$v=19$m=16,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG", "m >= 8 x p"),
    ("bcrypt$2b$...", "must be an argon2 hash"),
])
def test_check_config_parses_password_hashes_in_full(tmp_path: Path, value: str, problem: str) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(f'[gateway]\nid = "gw"\norg = "o"\n[[devices]]\nid = "AP-01"\npassword_hash = \'{value}\'\n',
                    encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    (line,) = err.value.errors
    assert "devices.0[id=AP-01].password_hash" in line and problem in line
