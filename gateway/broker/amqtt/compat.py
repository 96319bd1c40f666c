"""Start-up check: the installed amqtt is the pinned version and has every internal this package uses.

Run when the embedded backend is built (embedded.py), before this package's other modules are even
imported and before anything is patched: an amqtt other than the one we were written against fails
there with one IncompatibleLibraryError that names the version found and each missing or changed name,
instead of a wrong override that amqtt silently never calls, or an AttributeError on a device's packet.

What is checked (the list with the reasons is the package's module doc, __init__.py):
* the installed amqtt version equals AMQTT_VERSION (the pin in pyproject.toml);
* each method we override, swap or call exists on amqtt's class, is callable, and has the parameter
  names amqtt 0.12.1 gives it (amqtt calls some of them by keyword, and a renamed one means a changed
  contract);
* the instance attributes we read or replace, on freshly made objects (amqtt sets them in __init__);
* the asyncio internals slim_waits.py and connection.py use, and StreamWriter.start_tls (Python 3.11+)
  and StreamWriter._transport, with which prelogin.py upgrades an admitted connection (they belong to
  the Python version).
"""

from __future__ import annotations

import asyncio
import collections
import importlib
import importlib.metadata
import inspect
import platform
from typing import Any

from gateway.core.errors import IncompatibleLibraryError

AMQTT_VERSION = "0.12.1"

_CONNECTION = ("self", "client_session", "handler")

# Class -> member -> its parameter names (amqtt 0.12.1's).
_METHODS: dict[str, dict[str, tuple[str, ...]]] = {
    "amqtt.broker.Broker": {
        "stream_connected": ("self", "reader", "writer", "listener_name"),
        "_initialize_client_session": ("self", "reader", "writer", "remote_address", "remote_port"),
        "_authenticate": ("self", "session", "_"),
        "_handle_client_session": ("self", "reader", "writer", "client_session", "handler", "server", "listener_name"),
        "_client_message_loop": _CONNECTION,
        "_topic_filtering": ("self", "session", "topic", "action"),
        "_broadcast_message": ("self", "session", "topic", "data", "force_qos"),
        "_run_broadcast": ("self", "running_tasks"),
        "_create_server_instance": ("self", "listener_name", "listener_type", "address", "port", "ssl_context"),
        "_publish_retained_messages_for_subscription": ("self", "subscription", "session"),
        "_create_ssl_context": ("listener",),  # a staticmethod
        "_delete_session": ("self", "client_id"),
        "_handle_disconnect": (*_CONNECTION, "disconnect_waiter"),
        "_handle_subscription": (*_CONNECTION, "subscribe_waiter"),
        "_handle_unsubscription": (*_CONNECTION, "unsubscribe_waiter"),
        "_handle_message_delivery": (*_CONNECTION, "wait_deliver"),
        "_get_handler": ("self", "session"),
        "_retain_broadcast_message": ("self", "broadcast", "qos", "target_session"),
        "_matches": ("self", "topic", "a_filter"),
        "retain_message": ("self", "source_session", "topic_name", "data", "qos"),
        "internal_message_broadcast": ("self", "topic", "data", "qos"),
    },
    "amqtt.mqtt.protocol.broker_handler.BrokerProtocolHandler": {
        "init_from_connect": ("reader", "writer", "plugins_manager", "loop"),  # a classmethod
        "_reader_loop": ("self",),
        "stop": ("self",),
        "handle_read_timeout": ("self",),
        "_handle_qos1_message_flow": ("self", "app_message"),
        "_handle_qos2_message_flow": ("self", "app_message"),
        "handle_connection_closed": ("self",),
        "handle_publish": ("self", "publish_packet"),
        "handle_subscribe": ("self", "subscribe"),
        "handle_unsubscribe": ("self", "unsubscribe"),
        "handle_disconnect": ("self", "disconnect"),
        "handle_puback": ("self", "puback"),
        "handle_pingreq": ("self", "pingreq"),
        "handle_suback": ("self", "suback"),
        "handle_unsuback": ("self", "unsuback"),
        "handle_pubrec": ("self", "pubrec"),
        "handle_pubrel": ("self", "pubrel"),
        "handle_pubcomp": ("self", "pubcomp"),
        "mqtt_publish": ("self", "topic", "data", "qos", "retain", "ack_timeout"),
    },
    "amqtt.session.Session": {
        "_init_states": ("self",),  # ours once session_states.install() ran: it names amqtt's as __wrapped__
        "_on_enter_connected": ("self",),
        "_on_enter_disconnected": ("self",),
    },
    "amqtt.session.IncomingApplicationMessage": {"__init__": ("self", "packet_id", "topic", "qos", "data", "retain")},
    "amqtt.broker.Server": {"__init__": ("self", "listener_name", "server_instance", "max_connections")},
    "amqtt.adapters.StreamReaderAdapter": {"__init__": ("self", "reader")},
    "amqtt.adapters.StreamWriterAdapter": {"__init__": ("self", "writer"), "close": ("self",)},
    "amqtt.mqtt.packet.MQTTFixedHeader": {"from_stream": ("reader",), "to_bytes": ("self",)},
    "amqtt.adapters.BufferReader": {"__init__": ("self", "buffer"), "read": ("self", "n")},
    "amqtt.mqtt.connack.ConnackPacket": {"build": ("session_parent", "return_code")},
    "amqtt.plugins.manager.PluginManager": {"fire_event": ("self", "event_name", "wait", "method_kwargs")},
    "amqtt.contexts.BrokerConfig": {"get": ("self", "name", "default")},
}

# Instance attributes of a new Session that this package reads or sets (None: any type).
_SESSION_FIELDS: dict[str, type | None] = {
    "client_id": None, "username": None, "password": None, "clean_session": None, "parent": int,
    "keep_alive": int, "will_flag": bool, "will_message": None, "will_topic": None, "will_qos": None,
    "will_retain": None, "remote_address": None, "remote_port": None, "ssl_object": None,
    "transitions": None, "delivered_message_queue": asyncio.Queue, "retained_messages": asyncio.Queue,
    "inflight_out": dict, "is_anonymous": bool,
}
_HANDLER_FIELDS: dict[str, type | None] = {
    "_pending_subscriptions": asyncio.Queue, "_pending_unsubscriptions": asyncio.Queue,
    "_disconnect_waiter": None, "_reader_ready": None, "_reader_stopped": asyncio.Event,
    "plugins_manager": None, "reader": None, "session": None,
}
_BROKER_FIELDS: dict[str, type | None] = {
    "_sessions": dict, "_subscriptions": dict, "_retained_messages": dict, "_servers": dict,
    "_broadcast_queue": asyncio.Queue,
    "plugins_manager": None, "config": None,
}


def installed_amqtt_version() -> str:
    try:
        return importlib.metadata.version("amqtt")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def check_amqtt() -> None:
    """Raise IncompatibleLibraryError unless the installed amqtt is the one this package was written for.

    Call it in the running event loop (amqtt's handler takes the running loop when it is made).
    """
    found = installed_amqtt_version()
    problems = [] if found == AMQTT_VERSION else [f"version {found} installed, {AMQTT_VERSION} required"]
    classes: dict[str, Any] = {}
    for path, members in _METHODS.items():
        owner = _resolve(path, problems)
        if owner is None:
            continue
        classes[path] = owner
        for name, params in members.items():
            problems += _method_problems(owner, name, params)
    if not problems:  # the classes are all there: make the objects whose attributes we use
        problems += _instance_problems(classes)
    problems += _asyncio_problems()
    if problems:
        raise IncompatibleLibraryError("amqtt", found, problems)


def check_broker(broker: Any) -> None:
    """The attributes amqtt's Broker.__init__ sets that this package uses, on the broker just built."""
    problems = _field_problems("Broker()", broker, _BROKER_FIELDS)
    if problems:
        raise IncompatibleLibraryError("amqtt", installed_amqtt_version(), problems)


def _resolve(path: str, problems: list[str]) -> Any:
    module_name, _, name = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        problems.append(f"{module_name}: cannot be imported ({exc})")
        return None
    if not hasattr(module, name):
        problems.append(f"{path}: missing")
        return None
    return getattr(module, name)


def _method_problems(owner: Any, name: str, params: tuple[str, ...]) -> list[str]:
    where = f"{owner.__name__}.{name}"
    if not hasattr(owner, name):
        return [f"{where}: missing"]
    member = getattr(owner, name)
    if not callable(member):
        return [f"{where}: not callable"]
    found = tuple(inspect.signature(member).parameters)
    if found != params:
        return [f"{where}: parameters ({', '.join(found)}), expected ({', '.join(params)})"]
    return []


def _field_problems(where: str, obj: object, fields: dict[str, type | None]) -> list[str]:
    problems = []
    for name, kind in fields.items():
        if not hasattr(obj, name):
            problems.append(f"{where}.{name}: missing")
        elif kind is not None and not isinstance(getattr(obj, name), kind):
            problems.append(f"{where}.{name}: a {type(getattr(obj, name)).__name__}, expected a {kind.__name__}")
    return problems


def _instance_problems(classes: dict[str, Any]) -> list[str]:
    session = classes["amqtt.session.Session"]()
    handler = classes["amqtt.mqtt.protocol.broker_handler.BrokerProtocolHandler"](
        None, loop=asyncio.get_running_loop()
    )
    message = classes["amqtt.session.IncomingApplicationMessage"](None, "t", 0, b"", False)
    problems = _field_problems("Session()", session, _SESSION_FIELDS)
    problems += _field_problems("BrokerProtocolHandler()", handler, _HANDLER_FIELDS)
    problems += _field_problems("IncomingApplicationMessage()", message, {"publish_packet": None})
    # Attributes that hold what the constructor was given.
    given = object()
    for where, obj, name in (
        ("StreamReaderAdapter()", classes["amqtt.adapters.StreamReaderAdapter"](given), "_reader"),
        ("StreamWriterAdapter()", classes["amqtt.adapters.StreamWriterAdapter"](given), "_writer"),
        ("Server()", classes["amqtt.broker.Server"]("check", given, 0), "instance"),
    ):
        if vars(obj).get(name) is not given:
            problems.append(f"{where}.{name}: does not hold what the constructor was given")
    return problems


def _asyncio_problems() -> list[str]:
    python = f"Python {platform.python_version()}"
    deque = collections.deque
    problems = _field_problems(f"asyncio.Queue() ({python})", asyncio.Queue(), {
        "_getters": deque, "_putters": deque, "_queue": deque, "_finished": asyncio.Event,
    })
    problems += _field_problems(f"asyncio.Event() ({python})", asyncio.Event(), {"_waiters": deque})
    problems += _field_problems(f"asyncio.StreamReader() ({python})", asyncio.StreamReader(), {"_buffer": bytearray})
    problems += _method_problems(asyncio.StreamWriter, "start_tls",
                                 ("self", "sslcontext", "server_hostname", "ssl_handshake_timeout"))
    given = _ClosedTransport()
    writer = asyncio.StreamWriter(given, None, None, asyncio.get_running_loop())  # type: ignore[arg-type]
    if vars(writer).get("_transport") is not given:
        problems.append(f"asyncio.StreamWriter()._transport ({python}): does not hold the transport it was given")
    return problems


class _ClosedTransport:
    """Stands in for a transport in the StreamWriter check (its __del__ asks this)."""

    def is_closing(self) -> bool:
        return True
