"""Device passwords for the Mosquitto backend: Mosquitto's own PBKDF2-SHA512 format, `$7$ITERATIONS$SALT$HASH`.

Mosquitto 2.0 cannot check argon2, so a device on that backend carries `password_hash_mosquitto` (made by
`edge-gateway hash-password --for mosquitto`), written as-is into Mosquitto's password file: the same
line `mosquitto_passwd` writes (a 12-byte salt and the 64-byte PBKDF2-HMAC-SHA512 digest, base64).
Mosquitto checks logins on its one thread, so the iteration count is a cost per login on the broker:
10,000 cost ~8 ms per login here (x86), about 3x that on a Raspberry Pi 4 (mosquitto_passwd 2.0 uses 101).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets

DEFAULT_ITERATIONS = 10_000
_SALT_BYTES = 12
_DIGEST_BYTES = 64
_FORMAT = re.compile(r"^\$7\$(\d{1,9})\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$")


def hash_password_mosquitto(password: str, *, iterations: int = DEFAULT_ITERATIONS) -> str:
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password_mosquitto(password_hash: str, password: str) -> bool:
    match = _FORMAT.match(password_hash)
    if match is None:
        return False
    salt, digest = base64.b64decode(match[2]), base64.b64decode(match[3])
    computed = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(match[1]))
    return hmac.compare_digest(computed, digest)


def mosquitto_hash_problem(value: str) -> str | None:
    """Why `value` is not a hash Mosquitto 2.0 can check (None: it is)."""
    match = _FORMAT.match(value)
    if match is None:
        return ("must be a Mosquitto PBKDF2 hash $7$ITERATIONS$SALT$HASH "
                "(make one with `edge-gateway hash-password --for mosquitto`)")
    if int(match[1]) < 1:
        return "Mosquitto hash with 0 iterations"
    try:
        salt, digest = base64.b64decode(match[2], validate=True), base64.b64decode(match[3], validate=True)
    except binascii.Error:
        return "Mosquitto hash: salt or hash is not base64"
    if len(salt) < 8:
        return f"Mosquitto hash: salt of {len(salt)} bytes (at least 8)"
    if len(digest) != _DIGEST_BYTES:
        return f"Mosquitto hash: hash of {len(digest)} bytes (PBKDF2-SHA512 gives {_DIGEST_BYTES})"
    return None
