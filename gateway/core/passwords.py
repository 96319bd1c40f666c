"""Device password hashing: argon2id. Verification is CPU-heavy, so callers run it in a thread."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# Defaults of argon2-cffi (RFC 9106 low-memory profile): ~50 ms on a Pi 4, a few ms here.
_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def is_argon2_hash(value: str) -> bool:
    return value.startswith(("$argon2id$", "$argon2i$", "$argon2d$"))


# argon2-cffi realizes its C types lazily, and that first realization is not thread-safe: two
# logins verified at once in worker threads (100 purifiers reconnecting after a restart) aborted the
# process with a cffi assertion. Verifying once on the main thread before serving avoids it.
_WARM_UP_HASH = "$argon2id$v=19$m=8,t=1,p=1$/ZEJ1gpjLd/y4sylYUctrw$SHoe+KxoN6xY8xzGGnL+NvJQDqBhxm8NAOADbbE/vw0"


def warm_up() -> None:
    verify_password(_WARM_UP_HASH, "warm-up")
