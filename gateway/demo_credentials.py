"""The demo's published credentials: making them, and recognising them so the daemon refuses them.

The demo's gateway id and device passwords (`demo-{id}`) are printed in the README, so a gateway that runs
with them accepts anyone on the LAN. `edge-gateway demo` writes and uses them; `edge-gateway run` (the
daemon) refuses a config that holds any, and so does a config reload.

A demo password hash carries a fixed salt prefix (`DEMO_SALT_PREFIX`), so it is recognised from the hash
alone: no argon2 work at start-up (verifying `demo-{id}` against 100 hashes would cost seconds on a Pi),
and a demo hash copied onto another device id is still recognised.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import TYPE_CHECKING

from gateway.core.errors import ConfigError

if TYPE_CHECKING:
    from gateway.settings import LoadedSettings, Settings

DEMO_GATEWAY_ID = "gw-demo-01"
DEMO_PASSWORD_TEMPLATE = "demo-{id}"  # the simulator's default --password-template
DEMO_SALT_PREFIX = b"edge-gw-demo"
# The password is published: a work factor would protect nothing, and cheap hashes keep a 100-device demo's
# config quick to write and its logins quick to check.
_DEMO_ARGON2 = {"time_cost": 1, "memory_cost": 1024, "parallelism": 1, "hash_len": 32}


def demo_password(device_id: str) -> str:
    return DEMO_PASSWORD_TEMPLATE.format(id=device_id)


def demo_password_hash(device_id: str) -> str:
    """The argon2id hash of `demo-{id}` with the demo's salt (the same string every time)."""
    from argon2.low_level import Type, hash_secret

    salt = DEMO_SALT_PREFIX + hashlib.sha256(device_id.encode()).digest()[:4]
    encoded = hash_secret(demo_password(device_id).encode(), salt, type=Type.ID, **_DEMO_ARGON2)
    return encoded.decode("ascii")


def is_demo_hash(password_hash: str) -> bool:
    parts = password_hash.split("$")
    if len(parts) != 6:
        return False
    salt = parts[4]
    try:
        return base64.b64decode(salt + "=" * (-len(salt) % 4)).startswith(DEMO_SALT_PREFIX)
    except (binascii.Error, ValueError):
        return False


def demo_credentials(settings: Settings) -> list[tuple[str, str]]:
    """Where `settings` holds the demo's published credentials, as (field path, message)."""
    found: list[tuple[str, str]] = []
    if settings.gateway.id == DEMO_GATEWAY_ID:
        found.append(("gateway.id", f"{DEMO_GATEWAY_ID!r} is the demo's gateway id"))
    for index, device in enumerate(settings.devices):
        if device.password_hash is not None and is_demo_hash(device.password_hash):
            found.append((f"devices.{index}[id={device.id}].password_hash",
                          "a demo password (published in the README): set the device's own with "
                          "`edge-gateway hash-password`"))
    return found


def refusal(path: object, settings: Settings) -> list[str]:
    """The lines `run` prints when it refuses `settings` (empty: no demo credentials)."""
    found = demo_credentials(settings)
    if not found:
        return []
    return [*(f"{path}: {where}: {message}" for where, message in found),
            f"{path}: refused: demo credentials are for `edge-gateway demo` only (a production config: "
            "`edge-gateway init-config`, devices: `edge-gateway device add`)"]


def check_allowed(loaded: LoadedSettings, *, demo: bool) -> None:
    """Raise ConfigError naming every demo credential of `loaded`, unless it runs as the demo."""
    lines = [] if demo else refusal(loaded.path, loaded.settings)
    if lines:
        raise ConfigError(lines)
