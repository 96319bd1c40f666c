"""The [hubs] config section: mappings must name a hub and configured devices; mapped devices need no password."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.core.errors import ConfigError
from gateway.hub_wiring import hub_maps
from gateway.settings import load_settings

BASE = """
[gateway]
id = "gw"
org = "o"
[[devices]]
id = "HUB-1"
kind = "hub"
allow = "x"
[[devices]]
id = "AP-01"
[[devices]]
id = "T-1"
kind = "sensor"
"""


def config(tmp_path: Path, hubs: str) -> Path:
    hashed = 'password_hash = "$argon2id$v=19$m=1024,t=1,p=1$c29tZXNhbHQ$u3BnHcTvSvTQxjCx9b6Eyw"'
    text = BASE.replace('allow = "x"', hashed).replace('id = "AP-01"', f'id = "AP-01"\n{hashed}') + hubs
    path = tmp_path / "gw.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_mapped_device_needs_no_password_and_macs_match_in_any_case(tmp_path: Path) -> None:
    loaded = load_settings(config(tmp_path, """
[hubs]
batch_timeout_seconds = 30
[[hubs.mappings]]
hub = "HUB-1"
devices = { "beacon a1" = "T-1" }
macs = { "c4:7c:8d:6a:01:02" = "T-1" }
"""))
    assert loaded.settings.hubs.batch_timeout_seconds == 30
    maps = hub_maps(loaded.settings.hubs)
    assert maps["HUB-1"].devices == {"beacon a1": "T-1"} and maps["HUB-1"].macs == {"C4:7C:8D:6A:01:02": "T-1"}


def test_mappings_must_name_a_hub_and_configured_logical_devices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(config(tmp_path, """
[[hubs.mappings]]
hub = "AP-01"
devices = { "a" = "NOPE", "b" = "HUB-1" }
macs = { "not-a-mac" = "T-1" }
"""))
    text = str(err.value)
    assert "hubs.mappings.0.macs.not-a-mac.[key]" in text  # pydantic names the bad key
    with pytest.raises(ConfigError) as err:
        load_settings(config(tmp_path, """
[[hubs.mappings]]
hub = "AP-01"
devices = { "a" = "NOPE", "b" = "HUB-1" }
"""))
    text = str(err.value)
    assert "hubs.mappings.0[hub=AP-01].hub: 'AP-01' is not a configured device of kind 'hub'" in text
    assert "hubs.mappings.0[hub=AP-01].devices.a: 'NOPE' is not a configured device" in text
    assert "hubs.mappings.0[hub=AP-01].devices.b: 'HUB-1' is a hub, not a logical device" in text
    # T-1 is no longer reached through a hub: it needs a password again
    assert "devices.2[id=T-1].password_hash: required while broker.allow_anonymous is false" in text
