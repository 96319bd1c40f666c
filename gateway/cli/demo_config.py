"""The demo's config: a base config (the example by default) with N demo purifiers and the chosen ports.

Written to `{data_dir}/demo.toml` on every demo run, so `status`, `export` and the simulator can be pointed
at what the demo runs. The purifiers are the simulator's (`edge-gateway-sim purifiers`): ids AP-01, AP-02...
and passwords `demo-{id}`, hashed with the demo's salt (gateway/demo_credentials.py).
"""

from __future__ import annotations

from pathlib import Path

from firmware_sim.__main__ import device_ids

from gateway.demo_credentials import demo_password_hash, is_demo_hash
from gateway.settings import DeviceSettings, LoadedSettings, Settings

DEMO_ID_PREFIX = "AP-"
DEMO_CONFIG_NAME = "demo.toml"


def demo_settings(base: LoadedSettings, *, devices: int, mqtt_port: int | None, api_port: int | None) -> Settings:
    s = base.settings
    configured = {d.id: d for d in s.devices}
    purifiers: list[DeviceSettings] = []
    for n, device_id in enumerate(device_ids(DEMO_ID_PREFIX, 1, devices), start=1):
        known = configured.get(device_id)
        if known is not None and known.password_hash is not None and is_demo_hash(known.password_hash):
            purifiers.append(known)
        else:
            purifiers.append(DeviceSettings(id=device_id, kind="purifier", name=f"Demo purifier {n}",
                                            password_hash=demo_password_hash(device_id)))
    listeners = list(s.broker.listeners)
    if mqtt_port is not None:
        listeners[0] = listeners[0].model_copy(update={"port": mqtt_port})
    api = s.api if api_port is None else s.api.model_copy(update={"port": api_port, "enabled": True})
    return s.model_copy(update={
        "gateway": s.gateway.model_copy(update={"data_dir": base.data_dir}),
        "broker": s.broker.model_copy(update={"listeners": listeners}),
        "api": api,
        "devices": purifiers,
    })


def write_demo_config(settings: Settings, base_path: Path) -> Path:
    """`{data_dir}/demo.toml` holding `settings` (written whole, then renamed over the previous one)."""
    from gateway.cli.toml_writer import dumps

    data_dir = settings.gateway.data_dir
    assert data_dir is not None  # demo_settings sets it
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / DEMO_CONFIG_NAME
    header = (f"# Written by `edge-gateway demo` from {base_path}, rewritten on every demo run.\n"
              f"# {len(settings.devices)} demo purifiers: the passwords are demo-{{id}} (published: demo only).\n")
    body = dumps(settings.model_dump(mode="json", exclude_defaults=True, exclude_none=True))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(header + "\n" + body, encoding="utf-8")
    tmp.replace(path)
    return path
