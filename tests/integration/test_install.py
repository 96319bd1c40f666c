"""install.sh: the production layout, checked with --prefix so nothing is written outside tmp.

With --prefix DIR the installer puts everything under DIR and the unit names the DIR paths; it creates
no system user and runs no systemctl (see ./install.sh --help).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALL_SH = REPO / "install.sh"
LOCK = REPO / "config" / "requirements.lock"


def run_install(*args: str, timeout: float = 540, install_sh: Path = INSTALL_SH) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(install_sh), *args],
        cwd=install_sh.parent,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_install_sh_is_executable_and_parses() -> None:
    assert os.access(INSTALL_SH, os.X_OK), "install.sh lost its executable bit"
    subprocess.run(["bash", "-n", str(INSTALL_SH)], check=True, timeout=30)


def test_help_exits_zero_and_documents_options() -> None:
    result = run_install("--help", timeout=30)
    assert result.returncode == 0, result.stderr
    for option in ("--dev", "--prefix", "--no-systemd", "--create-user"):
        assert option in result.stdout


def test_unknown_option_fails() -> None:
    result = run_install("--no-such-option", timeout=30)
    assert result.returncode != 0
    assert "unknown option" in result.stderr


def test_repo_unit_file_has_production_paths() -> None:
    settings = unit_settings((REPO / "systemd" / "edge-gateway.service").read_text())
    assert settings["ExecStart"] == [
        "/opt/edge-gateway/venv/bin/edge-gateway run --config /etc/edge-gateway/gateway.toml"
    ]
    assert settings["ReadWritePaths"] == ["/var/lib/edge-gateway"]
    assert settings["StateDirectory"] == ["edge-gateway"]
    assert "MemoryDenyWriteExecute" not in settings  # cffi needs W+X memory


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    root = tmp_path_factory.mktemp("install-prefix")
    result = run_install("--prefix", str(root), "--no-systemd")
    assert result.returncode == 0, f"install.sh failed:\n{result.stdout}\n{result.stderr}"
    return root, result


@pytest.fixture(scope="module")
def prefix(installed: tuple[Path, subprocess.CompletedProcess[str]]) -> Path:
    return installed[0]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_venv_is_self_contained_and_not_editable(prefix: Path) -> None:
    venv = prefix / "opt/edge-gateway/venv"
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    for script in ("edge-gateway", "edge-gateway-sim"):
        assert os.access(venv / "bin" / script, os.X_OK), script
    # Run from outside the repo so the current directory cannot shadow the installed package.
    found = subprocess.run(
        [str(venv / "bin/python"), "-c", "import gateway; print(gateway.__file__)"],
        cwd=prefix,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    assert Path(found).is_relative_to(venv / "lib"), found


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_installed_console_script_runs(prefix: Path) -> None:
    result = subprocess.run(
        [str(prefix / "opt/edge-gateway/venv/bin/edge-gateway"), "--help"],
        cwd=prefix,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_config_and_state_dir(prefix: Path) -> None:
    config = prefix / "etc/edge-gateway/gateway.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    state = prefix / "var/lib/edge-gateway"
    assert state.is_dir()
    assert stat.S_IMODE(state.stat().st_mode) == 0o750


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_production_install_has_no_demo_credentials_and_says_what_next(
    installed: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    """A generated gateway id, no devices, the state directory as data_dir (whatever the current directory),
    accepted by `check-config --production`; the daemon refuses the example's demo credentials."""
    prefix, result = installed
    config = prefix / "etc/edge-gateway/gateway.toml"
    text = config.read_text()
    gateway_id = re.search(r'^id = "(gw-[0-9a-f]{8})"', text, re.M)
    assert gateway_id is not None, text[:600]
    settings = [line for line in text.splitlines() if not line.lstrip().startswith("#")]  # comments aside
    assert not [line for line in settings if "[[devices]]" in line or "[[users]]" in line or "argon2" in line]
    assert f'data_dir = "{prefix / "var/lib/edge-gateway"}"' in text
    edge_gateway = str(prefix / "opt/edge-gateway/venv/bin/edge-gateway")
    checked = subprocess.run([edge_gateway, "check-config", "--production", str(config)], cwd="/",
                             capture_output=True, text=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stderr
    assert f"gateway {gateway_id.group(1)}, 0 devices, data in {prefix / 'var/lib/edge-gateway'}" in checked.stdout
    refused = subprocess.run([edge_gateway, "run", "--config", str(REPO / "config/gateway.example.toml")],
                             cwd=prefix, capture_output=True, text=True, timeout=60, check=False,
                             env={**os.environ, "NOTIFY_SOCKET": ""})
    assert refused.returncode == 2 and "demo credentials are for `edge-gateway demo` only" in refused.stderr
    assert not (prefix / "var/gateway.db").exists()
    assert "Next steps:" in result.stdout
    assert f"edge-gateway device add ID --config {config}" in result.stdout


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_unit_points_at_prefix_paths(prefix: Path) -> None:
    unit = prefix / "etc/systemd/system/edge-gateway.service"
    settings = unit_settings(unit.read_text())
    venv = prefix / "opt/edge-gateway/venv"
    config = prefix / "etc/edge-gateway/gateway.toml"
    assert settings["ExecStart"] == [f"{venv}/bin/edge-gateway run --config {config}"]
    assert settings["ReadWritePaths"] == [str(prefix / "var/lib/edge-gateway")]
    assert settings["Type"] == ["notify"]
    assert settings["NotifyAccess"] == ["main"]
    assert settings["WatchdogSec"] == ["30"]
    assert settings["ProtectSystem"] == ["strict"]
    assert settings["NoNewPrivileges"] == ["yes"]
    assert settings["User"] == ["edge-gateway"]
    assert settings["Group"] == ["edge-gateway"]
    assert settings["Restart"] == ["on-failure"]
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_second_run_keeps_a_modified_config(prefix: Path) -> None:
    config = prefix / "etc/edge-gateway/gateway.toml"
    edited = config.read_text() + "\n# edited by the installer's owner\n"
    config.write_text(edited)
    config.chmod(0o600)

    result = run_install("--prefix", str(prefix), "--no-systemd")
    assert result.returncode == 0, f"second install.sh run failed:\n{result.stdout}\n{result.stderr}"

    assert config.read_text() == edited
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert "kept existing config" in result.stdout
    assert os.access(prefix / "opt/edge-gateway/venv/bin/edge-gateway", os.X_OK)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_kept_config_with_demo_credentials_or_a_low_port(prefix: Path) -> None:
    config = prefix / "etc/edge-gateway/gateway.toml"
    # an install from before: the demo's config, here with the API on port 443
    config.write_text((REPO / "config/gateway.example.toml").read_text().replace("port = 8080", "port = 443"))
    result = run_install("--prefix", str(prefix), "--no-systemd")
    assert result.returncode == 0, f"install.sh failed:\n{result.stdout}\n{result.stderr}"
    assert "kept existing config" in result.stdout
    assert f"warning: {config} is not ready for production" in result.stdout
    assert "gateway.id: 'gw-demo-01' is the demo's gateway id" in result.stderr
    assert "devices.0[id=AP-01].password_hash: a demo password" in result.stderr
    # a port below 1024: a drop-in grants the one capability it needs (the unit grants none)
    dropin = prefix / "etc/systemd/system/edge-gateway.service.d/50-privileged-port.conf"
    assert unit_settings(dropin.read_text()) == {"CapabilityBoundingSet": ["CAP_NET_BIND_SERVICE"],
                                                 "AmbientCapabilities": ["CAP_NET_BIND_SERVICE"]}
    assert unit_settings((prefix / "etc/systemd/system/edge-gateway.service").read_text())[
        "CapabilityBoundingSet"] == [""]
    config.write_text(config.read_text().replace("port = 443", "port = 8080"))
    result = run_install("--prefix", str(prefix), "--no-systemd")
    assert result.returncode == 0 and not dropin.exists(), result.stdout


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_libraries_are_exactly_the_locked_ones(prefix: Path) -> None:
    """Production installs from config/requirements.lock: every library at its locked version, nothing else (a
    resolve from pyproject.toml would leave the venv's own setuptools, and bring no wheel)."""
    locked = {canonical(n): v for n, v in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) ", LOCK.read_text(), re.M)}
    listed = subprocess.run(
        [str(prefix / "opt/edge-gateway/venv/bin/python"), "-m", "pip", "list", "--format=json"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    installed = {canonical(p["name"]): p["version"] for p in json.loads(listed)}
    assert {"amqtt", "setuptools", "wheel"} <= locked.keys()
    assert {n: installed.get(n) for n in locked} == locked
    assert installed.keys() - locked.keys() == {"edge-gateway", "pip"}


@pytest.mark.timeout(300)
def test_a_lock_entry_with_a_wrong_hash_fails_the_install(tmp_path: Path) -> None:
    """The lock is installed with --require-hashes: a file that does not match its hash is refused."""
    repo = tmp_path / "repo"
    for name in ("install.sh", "config/gateway.example.toml", "systemd/edge-gateway.service"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, repo / name)
    text = LOCK.read_text()
    first = re.search(r"^\S+==\S+ \\\n(?:\s+--hash=\S+(?: \\)?\n)+", text, re.M)  # the first library, with its hashes
    assert first is not None
    tampered = re.sub(r"sha256:[0-9a-f]{64}", "sha256:" + "0" * 64, first.group(0))
    (repo / "config" / "requirements.lock").write_text(text.replace(first.group(0), tampered))
    result = run_install("--prefix", str(tmp_path / "root"), "--no-systemd", install_sh=repo / "install.sh")
    assert result.returncode != 0
    assert "--require-hashes" in result.stdout
    assert "THESE PACKAGES DO NOT MATCH THE HASHES" in result.stderr
    assert not (tmp_path / "root/opt/edge-gateway/venv/bin/edge-gateway").exists()
