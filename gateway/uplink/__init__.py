"""Store-and-forward to the cloud broker (CONTRACT section 2).

The one package that uses aiomqtt's and paho-mqtt's private names (both pinned exactly in pyproject.toml):
``aiomqtt.Client._client`` and paho's ``Client._mid_generate``, ``_out_packet`` (its entries' form),
``_registered_write``, ``_handle_pubackcomp``, ``_sock_recv``, ``_in_packet``, ``_sock``, all in acks.py, which
says why and checks them (and the versions) when the uplink is built at start-up.
"""
