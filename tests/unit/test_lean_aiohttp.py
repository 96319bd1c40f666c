"""aiohttp is imported without loading CA certificates into its unused client SSL contexts (~3 MB)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import trustme

PROBE = """
import json, ssl, sys
import gateway.web.api  # the daemon's first import of aiohttp goes through here
import aiohttp.connector as connector
print(json.dumps({
    "verified": connector._SSL_CONTEXT_VERIFIED.cert_store_stats()["x509_ca"],
    "unverified": connector._SSL_CONTEXT_UNVERIFIED.cert_store_stats()["x509_ca"],
    "fresh": ssl.create_default_context().cert_store_stats()["x509_ca"],
    "patched": [n for n in ("load_default_certs", "set_default_verify_paths")
                if getattr(ssl.SSLContext, n).__qualname__.startswith("import_aiohttp")],
}))
"""


def run(code: str, env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True, env=env)
    return out.stdout


def test_aiohttp_client_contexts_hold_no_certificates_and_ssl_is_restored(tmp_path: Path) -> None:
    # A CA store of our own, so the check has teeth on any machine (with or without system CAs).
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    (tmp_path / "no-ca-dir").mkdir()
    env = {**os.environ, "SSL_CERT_FILE": str(tmp_path / "ca.pem"), "SSL_CERT_DIR": str(tmp_path / "no-ca-dir")}
    found = json.loads(run(PROBE, env))
    assert found["verified"] == 0 and found["unverified"] == 0
    assert found["patched"] == []  # the ssl module works as before for everyone else...
    assert found["fresh"] == 1  # ...a new default context loads the CA store


def test_nothing_to_do_when_aiohttp_is_already_imported() -> None:
    import aiohttp  # noqa: F401  (this test process imported it long ago)

    from gateway.web.lean_aiohttp import import_aiohttp

    assert import_aiohttp() is False
