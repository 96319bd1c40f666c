"""aiohttp is imported without loading CA certificates into its unused client SSL contexts (~3 MB)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import json, ssl, sys
import gateway.web  # the daemon's first import of aiohttp goes through here
import aiohttp.connector as connector
print(json.dumps({
    "verified": connector._SSL_CONTEXT_VERIFIED.cert_store_stats()["x509_ca"],
    "unverified": connector._SSL_CONTEXT_UNVERIFIED.cert_store_stats()["x509_ca"],
    "fresh": ssl.create_default_context().cert_store_stats()["x509_ca"],
    "patched": [n for n in ("load_default_certs", "set_default_verify_paths")
                if getattr(ssl.SSLContext, n).__qualname__.startswith("import_aiohttp")],
}))
"""


SYSTEM_CAS = "import ssl; print(ssl.create_default_context().cert_store_stats()['x509_ca'])"


def run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout


def test_aiohttp_client_contexts_hold_no_certificates_and_ssl_is_restored() -> None:
    system_cas = int(run(SYSTEM_CAS))
    if system_cas == 0:
        pytest.skip("this machine has no system CA store: nothing that could be skipped")
    found = json.loads(run(PROBE))
    assert found["verified"] == 0 and found["unverified"] == 0
    assert found["patched"] == []  # the ssl module works as before for everyone else...
    assert found["fresh"] == system_cas  # ...a new context loads the system CAs


def test_nothing_to_do_when_aiohttp_is_already_imported() -> None:
    import aiohttp  # noqa: F401  (this test process imported it long ago)

    from gateway.web.lean_aiohttp import import_aiohttp

    assert import_aiohttp() is False
