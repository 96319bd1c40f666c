"""The embedded LAN broker backend: amqtt 0.12.1 inside the daemon, and everything that touches its internals.

Nothing outside this package imports amqtt's broker or reaches into asyncio's private state; the rest of
the gateway sees `EmbeddedBroker` (embedded.py) through the LanBroker port. The package uses the private
names below, pinned by `amqtt==0.12.1` in pyproject.toml and checked at start by compat.py (version,
presence, parameter names, attribute types): an upgrade means re-reading this list against amqtt's new
source, then the broker tests.

amqtt.broker.Broker, methods overridden (GuardedBroker in guarded.py, its base RoutingBroker in routing.py):
  stream_connected             guarded: connection limits before amqtt sees the connection (prelogin.py);
                               amqtt's listener calls it for every accepted TCP connection
  _initialize_client_session   guarded: credentials are checked before amqtt looks up (and wipes, reuses
                               or takes over) the session of the CONNECT's client id
  _authenticate                guarded: only confirms the session came through that check
  _handle_client_session       guarded: takeover race, presence events (BrokerSink.connection), cleanup
                               per connection rather than per shared Session
  _client_message_loop         guarded -> client_loop.py: one Event instead of four waiter tasks
  _topic_filtering             routing: our ACL (acl.py) instead of amqtt's plugins
  _broadcast_message           routing: QoS 2 messages and Wills reach the sink, with an ACL check; no
                               broadcast when no MQTT client subscribes
  _publish_retained_messages_for_subscription
                               routing: replays only the session's own filters (amqtt leaks every retained
                               message); the command-readiness event (BrokerSink.subscribed)
  _create_ssl_context          guarded: a listener with a CA requires client certificates (a staticmethod
                               in amqtt, called through the instance)
  _create_server_instance      guarded: a TLS listener's SSL context is kept out of asyncio's start_server,
                               so the handshake runs after admission (prelogin.PreLogin.start_tls)
  _run_broadcast               routing: delivery at min(message QoS, subscription QoS) (amqtt: the
                               subscription's, or a forced one); called by amqtt's _broadcast_loop
  _retain_broadcast_message    routing: the queue of an offline persistent session is bounded (broker.
                               offline_queue), the oldest dropped first
amqtt.broker.Broker, methods called:
  _delete_session              guarded._find_session: a clean session replaces the old one
  _handle_disconnect, _handle_subscription, _handle_unsubscription, _handle_message_delivery
                               client_loop: amqtt's own work per wake-up, handed a finished future
  _get_handler                 routing: the handler that replays retained messages
  _matches                     routing (subscriber check, retained replay), embedded.command_ready
amqtt.broker.Broker, attributes:
  _sessions                    guarded: session lookup on login, removal of a refused session
  _subscriptions               routing: a client's own filters, "has a subscriber"; embedded.command_ready
  _retained_messages           routing: replay, deletion by an empty retained publish
  _broadcast_queue             routing._run_broadcast takes the next message from it (amqtt's dicts: session,
                               topic, data and, where given, qos)
  _servers (Server.instance)   guarded.stop_intake closes the listeners; embedded.bound_ports, and
                              embedded.start closes those bound before a failed one
amqtt.mqtt.protocol.broker_handler.BrokerProtocolHandler, per connection (connection.attach, reader_loop):
  handle_publish, handle_subscribe, handle_unsubscribe, stop, handle_read_timeout
                               swapped on the instance: PUBLISH intake (publish_flow.py), waking our client
                               loop, a delivery finishing before stop, silence closing the connection
  _reader_loop                 swapped on the instance: reader_loop.py, no task and timer per packet
  _handle_qos1_message_flow, _handle_qos2_message_flow
                               wrapped on the instance (connection.py): a message we sent whose exchange did
                               not complete stays in the session's inflight_out, so the next connection of a
                               persistent session sends it again with DUP, or its PUBREL (amqtt dropped it)
  _pending_subscriptions, _pending_unsubscriptions
                               asyncio Queues: slimmed, and the client loop takes requests from them
  _disconnect_waiter           the client loop wakes when it is done
  _reader_ready, _reader_stopped
                               Events: our reader loop sets them as amqtt's does; slimmed
  init_from_connect            prelogin.read_connect: validates the CONNECT (public, shape checked), handed
                               the packet read whole into amqtt's BufferReader after our size check
amqtt.mqtt.packet.MQTTFixedHeader.from_stream, .to_bytes
                               prelogin.read_connect: the remaining length is checked before a packet's body
                               is read (reader_loop reads fixed headers itself, and builds amqtt's public
                               PublishPacket from a PUBLISH read whole)
amqtt.session.Session:
  inflight_out                 connection._keep_unacknowledged puts an unacknowledged message back
  is_anonymous                 routing._run_broadcast: queued for offline only if not anonymous (amqtt's rule)
  _init_states                 replaced for every Session of the process (session_states.install): a light
                               state holder instead of a transitions.Machine (~16 KB a session)
  _on_enter_connected, _on_enter_disconnected
                               called by that holder, as the Machine's callbacks were
  transitions                  the holder is set here (public name, private contract)
amqtt.adapters:
  StreamWriterAdapter._writer  connection.transport_of: the asyncio transport, to write PUBACKs and abort
  StreamReaderAdapter._reader  connection.drop_unread: unparsed bytes are dropped at shutdown; reader_loop
                               reads headers and PUBLISH bodies from it directly
asyncio (Python 3.11 to 3.13):
  the loop's exception handler gets "socket.accept() out of system resource" for each failed accept
                               prelogin.AcceptErrors counts those and logs once a minute (public API, the
                               message text is asyncio's)
  StreamReader._buffer         connection.drop_unread
  StreamWriter.start_tls       prelogin.PreLogin.start_tls (public, 3.11+; server side because the stream came
                               from start_server): called with no await after the accept, so the ClientHello
                               is still unread when the handshake takes over the socket
  StreamWriter._transport      prelogin.PreLogin.start_tls: a connection closed during its handshake gets its
                               TCP transport back (asyncio leaves None there, and the writer's __del__ fails)
  Event._waiters               slim_waits: an empty list instead of a deque (~860 bytes an Event)
  Queue._getters, Queue._putters, Queue._finished, Queue._queue
                               slim_waits: the same for Queues (~3.3 KB a Queue)
The wire, under amqtt:
  raw PUBACK bytes             publish_flow.StoredAcks writes 0x40 0x02 + packet id to the transport once
                               the store has the message, outside the handler's write lock: amqtt writes
                               each packet with one write() (Packet.to_stream), so packets never interleave
"""
