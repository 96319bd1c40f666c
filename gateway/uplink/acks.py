"""QoS 1 publishing of the outbox lanes on the paho client that aiomqtt drives, with each PUBACK as a callback.

aiomqtt's ``publish()`` costs a task, an Event and a wait per message. paho's own ``publish()`` builds an
MQTTMessage with an MQTTMessageInfo (a threading.Condition), takes its locks, sends each message with a
send() of its own, and for each PUBACK reads three times (1 byte, 1 byte, the rest), makes a reason code
and a properties object and walks its in-flight table. The outbox only needs its bytes on the wire and to
know which message the cloud acknowledged, so the lanes:

* build their PUBLISH packets (MQTT 3.1.1) themselves, the topic's bytes cached, with a packet id from
  paho's own counter (no clash with the other publishes on the connection);
* write a lane's packets together (``flush()``): one send() for all of them, through paho's queue, so they
  keep their place among paho's own packets (pings, subscriptions, status);
* take their PUBACKs before paho's handler does (by packet id; any other PUBACK goes on to paho);
* give paho's reads a buffer: one recv() brings every packet waiting, and the read callback reads on
  while the buffer holds a packet.

aiomqtt keeps the connection, the socket and every other publish. Uses private names of paho-mqtt
(``_mid_generate``, ``_out_packet`` and its entries' form, ``_registered_write``, ``_handle_pubackcomp``,
``_sock_recv``, ``_in_packet``, ``_sock``) and
``aiomqtt.Client._client``; both libraries are pinned in pyproject.toml. ``check_installed()`` runs when the
uplink is built (start-up: IncompatibleLibraryError, exit 3, naming each name missing or of another shape), and
``check()`` again on each connection's client.
"""

from __future__ import annotations

import asyncio
import collections
import importlib.metadata
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import aiomqtt
import paho.mqtt.client as paho

from gateway.core.errors import IncompatibleLibraryError

T = TypeVar("T")
PINNED = {"paho-mqtt": "2.2.0", "aiomqtt": "2.5.1"}  # as pyproject.toml pins them
_MISSING = object()
_PRIVATE = ("_mid_generate", "_out_packet", "_registered_write", "_handle_pubackcomp", "_sock_recv", "_in_packet",
            "_sock")
_PUBLISH_QOS1 = 0x32
_READ_SIZE = 65536  # one recv() for every PUBACK waiting (a PUBACK is 4 bytes)
_READS_PER_TURN = 1024  # packets read in one event-loop turn at most (others' turn comes)


def check(client: aiomqtt.Client) -> None:
    """Raise IncompatibleLibraryError naming each private name this module needs that the installed aiomqtt or
    paho-mqtt lacks, or has in another shape."""
    inner = getattr(client, "_client", None)
    if not isinstance(inner, paho.Client):
        problems = [f"aiomqtt.Client._client is not a paho.mqtt.client.Client (found {type(inner).__name__})"]
    else:
        problems = [f"paho.mqtt.client.Client.{name} is missing" for name in _PRIVATE if not hasattr(inner, name)]
        shapes = (("_mid_generate", callable), ("_handle_pubackcomp", callable), ("_sock_recv", callable),
                  ("_out_packet", lambda v: isinstance(v, collections.deque)),
                  ("_in_packet", lambda v: isinstance(v, dict) and "packet" in v),
                  ("_registered_write", lambda v: isinstance(v, bool)))
        problems += [f"paho.mqtt.client.Client.{name} has another form ({type(getattr(inner, name)).__name__})"
                     for name, fits in shapes if hasattr(inner, name) and not fits(getattr(inner, name))]
    problems += [f"{dist} {_version(dist)}, the uplink was written against {pinned}"
                 for dist, pinned in PINNED.items() if _version(dist) != pinned]
    if problems:
        found = f"{_version('paho-mqtt')} (aiomqtt {_version('aiomqtt')})"
        raise IncompatibleLibraryError("paho-mqtt", found, [*problems, "used by gateway/uplink/acks.py"])


def check_installed() -> None:
    """check() on a client that is never connected (called at start-up, with the event loop running)."""
    check(aiomqtt.Client("127.0.0.1"))


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


class AckTracker(Generic[T]):
    """Publishes QoS 1 messages and calls ``on_ack(token)`` when the broker's PUBACK for one arrives.

    ``publish()`` builds a message; ``flush()`` hands what was built to paho (the caller flushes before it
    waits for anything, and after its last publish).
    """

    def __init__(self, client: aiomqtt.Client, on_ack: Callable[[T], None]) -> None:
        check(client)
        self._paho: paho.Client = client._client
        self._on_ack = on_ack
        self._pending: dict[int, T] = {}
        self._topics: dict[str, bytes] = {}  # topic -> its length and UTF-8 bytes, as a PUBLISH carries it
        self._out = bytearray()  # packets built, not yet handed to paho
        self._read = bytearray()  # bytes received, not yet read by paho
        self._install()

    def _install(self) -> None:
        inner = self._paho
        pending, on_ack, buffered = self._pending, self._on_ack, self._read
        handle_pubackcomp = inner._handle_pubackcomp
        sock_recv = inner._sock_recv
        loop_read = inner.loop_read

        def pubackcomp(cmd: Any) -> Any:
            if cmd == "PUBACK":
                packet = inner._in_packet["packet"]
                if len(packet) == 2:  # MQTT 3.1.1: the packet id alone
                    token = pending.pop(packet[0] << 8 | packet[1], _MISSING)
                    if token is not _MISSING:
                        on_ack(token)  # type: ignore[arg-type]
                        return paho.MQTT_ERR_SUCCESS
            return handle_pubackcomp(cmd)

        def recv(bufsize: int) -> bytes:
            if not buffered:
                data = sock_recv(_READ_SIZE)  # raises BlockingIOError when nothing waits, as paho expects
                if len(data) <= bufsize:
                    return data
                buffered.extend(data)
            out = bytes(buffered[:bufsize])
            del buffered[:bufsize]
            return out

        def read(max_packets: int = 1) -> Any:
            rc = loop_read(max_packets)
            turns = _READS_PER_TURN
            while buffered and rc == paho.MQTT_ERR_SUCCESS and inner._sock is not None and turns:
                rc = loop_read(max_packets)
                turns -= 1
            if buffered and rc == paho.MQTT_ERR_SUCCESS and inner._sock is not None:
                # The rest at a later turn: the socket may stay silent, and nothing else would read it.
                asyncio.get_running_loop().call_soon(read)
            return rc

        inner._handle_pubackcomp = pubackcomp  # type: ignore[method-assign]
        inner._sock_recv = recv  # type: ignore[method-assign]
        inner.loop_read = read  # type: ignore[method-assign]

    def publish(self, topic: str, payload: bytes, token: T) -> None:
        """Build the message (QoS 1, not retained); it goes at the next flush()."""
        head = self._topics.get(topic)
        if head is None:
            encoded = topic.encode()
            if not encoded or b"+" in encoded or b"#" in encoded or len(encoded) > 65535:
                raise ValueError(f"not a topic to publish to: {topic!r}")
            head = self._topics[topic] = len(encoded).to_bytes(2, "big") + encoded
        mid = self._paho._mid_generate()
        out = self._out
        out.append(_PUBLISH_QOS1)
        out += _remaining_length(len(head) + 2 + len(payload))
        out += head
        out += mid.to_bytes(2, "big")
        out += payload
        # A PUBACK is read by the event loop later, never inside publish(): recording it now is safe.
        self._pending[mid] = token

    def flush(self) -> None:
        """Write the messages built (what the socket does not take now, paho writes when it can); raises if
        the link is down (the messages are dropped: their tokens never see a PUBACK)."""
        if not self._out:
            return
        packets, self._out = bytes(self._out), bytearray()
        inner = self._paho
        if inner._sock is None:
            raise aiomqtt.MqttCodeError(paho.MQTT_ERR_NO_CONN, "Could not publish message")
        # Behind whatever paho has queued. Written now when paho waits for no write callback: no callback and
        # loop turn per batch (paho's _packet_queue would have aiomqtt register one, through
        # call_soon_threadsafe). While one is on its way, that callback writes it: a write here would end
        # paho's registration before aiomqtt's add_writer has run, which would then stay registered for good
        # (a callback every loop turn).
        inner._out_packet.append({"command": paho.PUBLISH, "mid": 0, "qos": 1, "pos": 0,
                                  "to_process": len(packets), "packet": packets, "info": None})
        if inner._registered_write:
            return
        rc = inner.loop_write()
        if rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(rc, "Could not publish message")
