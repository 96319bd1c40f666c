"""aiohttp's `web`, imported the lean way: the modules that serve HTTP take it from here.

aiohttp's first import must go through `lean_aiohttp` (see there why); importing `web` from this module
guarantees that order whoever imports first.
"""

from gateway.web.lean_aiohttp import import_aiohttp

import_aiohttp()

from aiohttp import web  # noqa: E402  (after the lean import, on purpose)

__all__ = ["web"]
