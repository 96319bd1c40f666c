"""Device password hashing: argon2id. Verification is CPU-heavy, so callers run it in a thread."""

from __future__ import annotations

import re

from argon2 import PasswordHasher, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# New hashes: argon2id with OWASP's recommended minimum, m = 19 MiB, t = 2, p = 1. argon2-cffi's default
# (RFC 9106's low-memory profile, m = 64 MiB, p = 4) made each login hold 64 MiB while it was checked: a
# burst of logins on a 1 GB board cost >100 MB. Verification reads the parameters from the hash itself,
# so hashes made with the old default keep working (at their own cost).
HASH_MEMORY_KIB, HASH_TIME_COST, HASH_PARALLELISM = 19 * 1024, 2, 1
_hasher = PasswordHasher(time_cost=HASH_TIME_COST, memory_cost=HASH_MEMORY_KIB, parallelism=HASH_PARALLELISM)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


_B64 = re.compile(r"^[A-Za-z0-9+/]+$")


def argon2_hash_problem(value: str) -> str | None:
    """Why `value` is not a usable argon2 hash (None: it is): parsed in full, as verification will."""
    if not value.startswith(("$argon2id$", "$argon2i$", "$argon2d$")):
        return "must be an argon2 hash (make one with `edge-gateway hash-password`)"
    try:
        params = extract_parameters(value)
    except InvalidHashError:
        return "not a complete argon2 hash: expected $argon2id$v=19$m=MEMORY,t=TIME,p=LANES$SALT$HASH"
    salt, digest = value.split("$")[-2:]
    for name, part in (("salt", salt), ("hash", digest)):
        if not _B64.match(part) or len(part) % 4 == 1:
            return f"argon2 {name} is not base64 ({part[:16]!r})"
    if params.salt_len < 8:
        return f"argon2 salt of {params.salt_len} bytes (at least 8)"
    if params.hash_len < 16:
        return f"argon2 hash of {params.hash_len} bytes (at least 16)"
    if params.time_cost < 1 or params.parallelism < 1 or params.memory_cost < 8 * params.parallelism:
        return (f"argon2 parameters out of range: t={params.time_cost}, p={params.parallelism}, "
                f"m={params.memory_cost} (need t >= 1, p >= 1, m >= 8 x p)")
    return None


# argon2-cffi realizes its C types lazily, and that first realization is not thread-safe: two
# logins verified at once in worker threads (100 purifiers reconnecting after a restart) aborted the
# process with a cffi assertion. Verifying once on the main thread before serving avoids it.
_WARM_UP_HASH = "$argon2id$v=19$m=8,t=1,p=1$/ZEJ1gpjLd/y4sylYUctrw$SHoe+KxoN6xY8xzGGnL+NvJQDqBhxm8NAOADbbE/vw0"


def warm_up() -> None:
    verify_password(_WARM_UP_HASH, "warm-up")
