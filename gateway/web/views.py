"""JSON views of the control service's domain objects, as the REST API and the cloud's methods answer.

The control service returns records and dataclasses; the wire forms (camelCase keys, in this order)
are made here, in one place for both front doors. The stored audit log's pages use the same command
form (gateway/store/read_queries.py builds those rows).

These are our names. A schedule carries the fields the Praan air-purifier backend's clients read that
ours lacked (``lastExecuted``, ``executionHistory``: ISO 8601 UTC times, as that backend answers JavaScript
dates; ours stay epoch seconds). Answers in Praan's names are rendered from these by
gateway/web/praan_names.py. Each field has one name per object.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.control.attempts import log_to_json
from gateway.control.command_model import CommandRecord
from gateway.control.preclean import PrecleanStatus
from gateway.control.schedule_service import RunRecord
from gateway.control.schedules import Schedule
from gateway.control.service import DeviceControl
from gateway.core.models import DeviceState
from gateway.web.praan_names import iso_utc


def command_json(record: CommandRecord) -> dict[str, Any]:
    return {
        "commandId": record.command_id,
        "device": record.device,
        "action": record.action,
        "value": record.value,
        "source": record.source,
        "cause": record.cause,
        "status": record.status.value,
        "attempts": record.attempts,
        "createdAt": record.created_at,
        "sentAt": record.sent_at,
        "lastSentAt": record.last_sent_at,
        "finishedAt": record.finished_at,
        "error": record.error,
        "state": record.state,
        "note": record.note,
        "attemptLog": log_to_json(record.attempt_log),
    }


def schedule_json(schedule: Schedule, history: Sequence[RunRecord] = ()) -> dict[str, object]:
    """The REST API's form: the device as ``deviceId`` (the cloud's form, `to_json`, says ``device``), and
    its recent runs (newest first): ``lastExecuted`` (the latest start) and ``executionHistory``."""
    body = schedule.to_json()
    del body["device"]
    last = next((run.at for run in history if run.phase == "start"), None)
    return {
        "id": body.pop("id"), "deviceId": schedule.device, **body,
        "lastExecuted": iso_utc(last),
        "executionHistory": [{"executedAt": iso_utc(run.at), "phase": run.phase, "fanSpeed": run.fan_speed}
                             for run in history],
    }


def preclean_json(status: PrecleanStatus) -> dict[str, Any]:
    if not status.active:
        return {"device": status.device, "active": False, "fanSpeed": None, "startedAt": None, "endsAt": None,
                "remainingSeconds": 0}
    return {"device": status.device, "active": True, "fanSpeed": status.fan_speed, "startedAt": status.started_at,
            "endsAt": status.ends_at, "remainingSeconds": status.remaining_seconds, "source": status.source}


def device_control_json(view: DeviceControl) -> dict[str, Any]:
    """``desired`` (the winning layer), every active ``layers`` entry, ``inFlight`` and ``pending`` commands."""
    desired = view.desired
    return {
        "desired": None if desired is None else {
            "power": desired.value.power, "fanSpeed": desired.value.fan_speed,
            "layer": desired.layer.label, "expiresAt": desired.expires_at,
        },
        "layers": {
            layer.label: {"power": e.value.power, "fanSpeed": e.value.fan_speed, "expiresAt": e.expires_at}
            for layer, e in view.layers.items()
        },
        "inFlight": None if view.in_flight is None else command_json(view.in_flight),
        "pending": [command_json(r) for r in view.pending],
    }


def device_state_json(device_id: str, state: DeviceState | None) -> dict[str, Any]:
    """The state page of one device: connection, latest reading (acked state laid over it)."""
    return {
        "device": device_id,
        "online": bool(state and state.online),
        "lastSeen": state.last_seen if state else None,
        "ts": state.last_ts if state else None,
        "metrics": dict(state.last_metrics) if state else {},
    }
