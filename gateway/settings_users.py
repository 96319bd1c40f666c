"""Who may use the panel and the REST API: `[[users]]` and the `[panel]` section of the config.

A user logs in to the panel with a name and a password (argon2 hash from `edge-gateway hash-password`) and
has one role: a *viewer* sees, an *operator* also commands and edits (fan, pre-clean, schedules), an
*admin* also sees the gateway page's details (quarantine, clients, disk). Scripts use an API token
(`Authorization: Bearer ...`; the config holds its SHA-256, never the token). With no user configured the
REST API stays open as before and the panel says how to add one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.core.passwords import argon2_hash_problem

Role = Literal["viewer", "operator", "admin"]
ROLE_RANK: dict[str, int] = {"viewer": 0, "operator": 1, "admin": 2}

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UserSettings(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")]
    role: Role = "viewer"
    password_hash: str

    @field_validator("password_hash")
    @classmethod
    def _argon2(cls, value: str) -> str:
        problem = argon2_hash_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


class ApiTokenSettings(_Strict):
    """A bearer token for scripts: `token_sha256` is `printf %s TOKEN | sha256sum` (lower-case hex)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")]
    role: Role = "viewer"
    token_sha256: str

    @field_validator("token_sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        if not _SHA256_HEX.match(value):
            raise ValueError("must be the SHA-256 of the token as 64 lower-case hex digits (printf %s TOKEN | "
                             "sha256sum)")
        return value


def _check_unique(names: list[str], what: str) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{what} names must be unique, repeated: {', '.join(dupes)}")


def _unique_names(items: list[UserSettings]) -> list[UserSettings]:
    _check_unique([item.name for item in items], "user")
    return items


Users = Annotated[list[UserSettings], AfterValidator(_unique_names)]


class PanelSection(_Strict):
    """Sessions, login limits, API tokens and TLS of the panel (served on the REST API's address)."""

    # A session ends after this long without a request, and in any case this long after its login.
    session_idle_minutes: Annotated[float, Field(gt=0, le=7 * 24 * 60)] = 60.0
    session_max_hours: Annotated[float, Field(gt=0, le=30 * 24)] = 12.0
    max_sessions: Annotated[int, Field(ge=1, le=10_000)] = 200  # the oldest goes when a login would pass it
    # Failed logins per source address within the window; the next attempt is answered 429 until it passes.
    login_attempts: Annotated[int, Field(ge=1, le=1000)] = 5
    login_window_seconds: Annotated[float, Field(gt=0, le=86_400)] = 300.0
    # With users configured, anonymous REST API access stops; this keeps it for scripts on the box itself
    # (requests from 127.0.0.1 / ::1 without credentials act as an admin). The panel always needs a login.
    loopback_anonymous_api: bool = False
    api_tokens: list[ApiTokenSettings] = Field(default_factory=list)
    # TLS for the panel and the API when both are given (cookies are then marked Secure).
    certfile: Path | None = None
    keyfile: Path | None = None
    # Live feed: a comment line this often keeps proxies from closing an idle stream and lets the page
    # tell a live stream from a stale one.
    keepalive_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0

    @model_validator(mode="after")
    def _tls_pair(self) -> PanelSection:
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("certfile and keyfile go together: give both for TLS, or neither")
        for label, path in (("certfile", self.certfile), ("keyfile", self.keyfile)):
            if path is not None and not path.is_file():
                raise ValueError(f"{label} {str(path)!r} does not exist or is not a file")
        _check_unique([t.name for t in self.api_tokens], "api token")
        return self

    @property
    def tls(self) -> bool:
        return self.certfile is not None
