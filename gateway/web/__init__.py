"""HTTP side of the gateway: the local REST API, the panel pages and their live feed, and the JSON views.

Importing this package imports no aiohttp (the JSON views serve the cloud's methods too, with the API
off): the modules that serve HTTP take aiohttp's `web` from `aiohttp_web`, which imports it the lean way.
"""
