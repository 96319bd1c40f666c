"""HTTP side of the gateway: the local REST API (later also the panel pages, live feed and login)."""
