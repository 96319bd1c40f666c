"""Cloud topics and payloads (CONTRACT section 2). Pure functions: no I/O."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.core.models import OutboxEntry

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


@dataclass(frozen=True, slots=True)
class Topics:
    org: str
    gateway_id: str
    # Made once, spliced into every message: the gateway id as JSON, and a msgId's JSON up to its seq.
    gateway_json: str = field(init=False, repr=False, compare=False)
    msg_id_head: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "gateway_json", _dumps(self.gateway_id))
        object.__setattr__(self, "msg_id_head", _dumps(msg_id(self.gateway_id, 0))[:-2])  # '"gw:' of '"gw:0"'

    def telemetry(self, device_id: str) -> str:
        return f"v1/telemetry/{self.org}/{device_id}"

    @property
    def batch(self) -> str:
        return f"v1/telemetry/{self.org}/{self.gateway_id}/batch"

    def event(self, device_id: str | None) -> str:
        return f"v1/events/{self.org}/{device_id or self.gateway_id}"

    @property
    def status(self) -> str:
        return f"v1/gateways/{self.org}/{self.gateway_id}/status"

    @property
    def devices(self) -> str:
        return f"v1/gateways/{self.org}/{self.gateway_id}/devices"

    @property
    def rpc_request(self) -> str:
        return f"v1/commands/{self.org}/{self.gateway_id}/request"

    @property
    def rpc_response(self) -> str:
        return f"v1/commands/{self.org}/{self.gateway_id}/response"


def msg_id(gateway_id: str, seq: int) -> str:
    return f"{gateway_id}:{seq}"


def entry_message(topics: Topics, entry: OutboxEntry) -> tuple[str, bytes]:
    """One outbox row as its own message. The stored body is already JSON: spliced, not re-encoded."""
    gw, head = topics.gateway_json, topics.msg_id_head
    if entry.kind == "telemetry":
        payload = f'{{"ts":{entry.ts!r},"metrics":{entry.body},"gatewayId":{gw},"msgId":{head}{entry.seq}"}}'
        return topics.telemetry(entry.device_id or topics.gateway_id), payload.encode()
    # event body is {"type": ..., "data": ...}: open it up and add the envelope fields
    payload = f'{{"ts":{entry.ts!r},{entry.body[1:-1]},"gatewayId":{gw},"msgId":{head}{entry.seq}"}}'
    return topics.event(entry.device_id), payload.encode()


def batch_message(topics: Topics, entries: Sequence[OutboxEntry]) -> tuple[str, bytes]:
    """Telemetry rows as one batch message: {"gatewayId", "readings": [{"deviceId", "ts", "metrics", "msgId"}]}."""
    head = topics.msg_id_head
    parts = [
        f'{{"deviceId":{_dumps(e.device_id)},"ts":{e.ts!r},"metrics":{e.body},"msgId":{head}{e.seq}"}}'
        for e in entries
    ]
    return topics.batch, f'{{"gatewayId":{topics.gateway_json},"readings":[{",".join(parts)}]}}'.encode()


def batch_item_size(entry: OutboxEntry) -> int:
    """Bytes an entry adds to a batch message (close upper bound), for the batch byte limit."""
    return len(entry.body) + len(entry.device_id or "") + 80


def status_payload(*, online: bool, version: str, started_at: float, backlog: int) -> bytes:
    return _dumps({"online": online, "version": version, "startedAt": started_at, "backlog": backlog}).encode()


def devices_payload(devices: Sequence[dict[str, Any]]) -> bytes:
    return _dumps(list(devices)).encode()
