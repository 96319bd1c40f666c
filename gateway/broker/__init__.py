"""The LAN broker behind one seam: backends hand (client id, topic, payload) to a BrokerSink."""
