"""Import aiohttp without the client SSL contexts it builds at import time.

aiohttp (3.10 and later) creates two client `SSLContext`s when `aiohttp.connector` is imported, and the
verified one loads the system CA store: ~3 MB of resident memory (measured here: 2.3 MB for the first
context, 0.8 MB for the second), on a board where the whole daemon should stay under 60 MB. The gateway
only *serves* HTTP with aiohttp; it never makes an aiohttp client request. So for the duration of that
import, loading CA certificates is skipped. Should something ever use aiohttp's client with its default
SSL context, certificate verification fails (no trusted CA): it fails closed, never open.

Nothing else is affected: the ssl module is restored before this returns, and the uplink builds its own
context (system CAs or the configured CA file). If aiohttp is already imported (a test process, or a
future import order), this does nothing.
"""

from __future__ import annotations

import importlib
import ssl
import sys
from typing import Any


def import_aiohttp() -> bool:
    """Import aiohttp (and its connector) the lean way; False if it was already imported."""
    if "aiohttp" in sys.modules:
        return False
    context = ssl.SSLContext
    saved = {name: context.__dict__.get(name) for name in ("load_default_certs", "set_default_verify_paths")}

    def skip(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        return None

    context.load_default_certs = skip  # type: ignore[method-assign]  # used by ssl.create_default_context
    context.set_default_verify_paths = skip  # type: ignore[method-assign]  # used by the unverified one
    try:
        importlib.import_module("aiohttp.connector")
    finally:
        for name, value in saved.items():
            if value is None:
                delattr(context, name)  # it was inherited from _ssl._SSLContext
            else:
                setattr(context, name, value)
    return True
