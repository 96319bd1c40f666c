"""The start-up check of the embedded broker: it passes on the pinned amqtt, and names what an amqtt lacks."""

from __future__ import annotations

import asyncio
import tomllib
import types
from pathlib import Path
from typing import Any

import pytest
from amqtt.broker import Broker
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.protocol.handler import ProtocolHandler

import gateway.broker.amqtt
from gateway.broker import create_lan_broker
from gateway.broker.amqtt import compat
from gateway.core.errors import GatewayError, IncompatibleLibraryError
from gateway.core.metrics import Metrics
from gateway.settings_broker import BrokerSection

REPO = Path(__file__).resolve().parents[2]


def check_fails() -> IncompatibleLibraryError:
    with pytest.raises(IncompatibleLibraryError) as failed:
        compat.check_amqtt()
    return failed.value


async def test_the_installed_amqtt_passes() -> None:
    compat.check_amqtt()


async def test_a_missing_method_is_named_with_the_version_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(Broker, "_matches")
    error = check_fails()
    assert isinstance(error, GatewayError)
    assert error.problems == ["Broker._matches: missing"]
    assert str(error).startswith(f"amqtt {compat.installed_amqtt_version()} ")
    assert "Broker._matches: missing" in str(error)


async def test_every_problem_is_in_the_one_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(Broker, "_publish_retained_messages_for_subscription")
    monkeypatch.delattr(ProtocolHandler, "_reader_loop")  # BrokerProtocolHandler inherits it
    monkeypatch.setattr(compat, "AMQTT_VERSION", "0.12.2")
    assert check_fails().problems == [
        f"version {compat.installed_amqtt_version()} installed, 0.12.2 required",
        "Broker._publish_retained_messages_for_subscription: missing",
        "BrokerProtocolHandler._reader_loop: missing",
    ]


async def test_changed_parameters_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    def _get_handler(self: Any, client_session: Any) -> None:
        return None

    monkeypatch.setattr(Broker, "_get_handler", _get_handler)
    assert check_fails().problems == [
        "Broker._get_handler: parameters (self, client_session), expected (self, session)"
    ]


async def test_a_missing_instance_attribute_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    original = BrokerProtocolHandler.__init__

    def without_pending_subscriptions(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        del self._pending_subscriptions

    monkeypatch.setattr(BrokerProtocolHandler, "__init__", without_pending_subscriptions)
    assert check_fails().problems == ["BrokerProtocolHandler()._pending_subscriptions: missing"]


def test_the_broker_instance_check_names_a_missing_attribute() -> None:
    fields: dict[str, Any] = {"_sessions": {}, "_subscriptions": {}, "_retained_messages": {},
                              "_broadcast_queue": asyncio.Queue(), "plugins_manager": None, "config": None}
    with pytest.raises(IncompatibleLibraryError) as failed:
        compat.check_broker(types.SimpleNamespace(**fields))
    assert failed.value.problems == ["Broker()._servers: missing"]


async def test_building_the_embedded_backend_runs_the_check(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delattr(Broker, "_client_message_loop")
    with pytest.raises(IncompatibleLibraryError, match=r"Broker\._client_message_loop: missing"):
        create_lan_broker(BrokerSection(), [], sink=None, metrics=Metrics(), state_dir=tmp_path)  # type: ignore[arg-type]


def test_the_check_requires_the_version_pinned_in_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert f"amqtt=={compat.AMQTT_VERSION}" in [d.split("#")[0].replace(" ", "") for d in project["dependencies"]]


def test_the_package_doc_lists_every_private_name_the_check_covers() -> None:
    doc = gateway.broker.amqtt.__doc__ or ""
    names = [name for members in compat._METHODS.values() for name in members]
    names += [*compat._HANDLER_FIELDS, *compat._BROKER_FIELDS]
    private = {n for n in names if n.startswith("_") and not n.startswith("__")}
    assert len(private) >= 25
    assert sorted(n for n in private if n not in doc) == []
