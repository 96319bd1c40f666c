"""HTTP side of the gateway: the local REST API, the panel pages and their live feed.

aiohttp is first imported here, through `lean_aiohttp`: see there why.
"""

from gateway.web.lean_aiohttp import import_aiohttp

import_aiohttp()
