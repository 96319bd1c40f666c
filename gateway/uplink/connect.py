"""The uplink's connection to the cloud broker: the aiomqtt client as the uplink needs it, and how its failures read."""

from __future__ import annotations

import socket
import ssl

import aiomqtt

from gateway.settings import UplinkSection


def cloud_client(s: UplinkSection, gateway_id: str, *, will_topic: str, will_payload: bytes,
                 extra_pending_calls: int) -> aiomqtt.Client:
    """MQTT 3.1.1, a persistent session under the gateway's id, QoS 1 Will on the status topic, TLS as configured."""
    client = aiomqtt.Client(
        s.host,
        s.port,
        identifier=gateway_id,
        clean_session=False,
        keepalive=s.keepalive,
        username=s.username,
        password=s.password,
        tls_context=tls_context(s),
        will=aiomqtt.Will(will_topic, will_payload, qos=1, retain=True),
        max_inflight_messages=s.inflight,
        protocol=aiomqtt.ProtocolVersion.V311,
        socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
        timeout=10,
    )
    # Our window allows `inflight` publishes waiting for PUBACK by design; aiomqtt warns from 10 on,
    # which would log a line per reading under load.
    client.pending_calls_threshold = s.inflight + extra_pending_calls + 10
    return client


def tls_context(s: UplinkSection) -> ssl.SSLContext | None:
    if not s.tls:
        return None
    ctx = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
    if s.client_cert is not None and s.client_key is not None:
        ctx.load_cert_chain(str(s.client_cert), str(s.client_key))
    return ctx


def is_link_error(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(is_link_error(e) for e in exc.exceptions)
    return isinstance(exc, aiomqtt.MqttError | OSError | ssl.SSLError | TimeoutError)


def describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"

