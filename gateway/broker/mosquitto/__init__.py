"""The managed Mosquitto backend (`broker.backend = "mosquitto"`): Debian's Mosquitto 2.0 as a supervised child.

    backend.py          MosquittoBroker: the LanBroker (start, supervised run, reload, commands, shutdown)
    child.py            the process: start until listening, log lines, SIGHUP, SIGTERM
    config_files.py     mosquitto.conf, password file, ACL file (0600, in <state dir>/mosquitto/)
    connection_log.py   presence and subscriptions from Mosquitto's log lines
    ingest_client.py    the gateway's own client: QoS 1, persistent session, PUBACK after the commit
    mqtt_wire.py        the MQTT 3.1.1 packets it sends, and its reader
"""
