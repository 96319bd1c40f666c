"""The short exception hierarchy of the gateway."""


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """The installer's configuration is invalid; `errors` holds `FILE: path: message` lines."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class PayloadError(GatewayError):
    """A device payload cannot be accepted; the message is the quarantine reason."""


class StoreClosedError(GatewayError):
    """The store no longer accepts writes (shutdown in progress)."""


class NotFoundError(GatewayError):
    """A device or schedule that does not exist (answer 404 / JSON-RPC -32602)."""

    def __init__(self, kind: str, key: object) -> None:
        super().__init__(f"unknown {kind} {key!r}")
        self.kind = kind
        self.key = key


class ConflictError(GatewayError):
    """The request is valid but does not fit the current state (answer 409), e.g. no pre-clean to cancel."""


class StartupError(GatewayError):
    """The daemon could not start (a port in use, an unwritable data dir, a database it cannot open).

    Everything already started was stopped again in order; `phase` names what failed.
    """

    def __init__(self, phase: str, cause: BaseException) -> None:
        detail = cause.__cause__ if isinstance(cause.__cause__, OSError) else cause
        super().__init__(f"cannot start: {phase}: {detail}")
        self.phase = phase


class IncompatibleLibraryError(GatewayError):
    """An installed library is not the version, or lacks the internals, that a backend was written against.

    Raised at start-up, before the backend runs; `problems` lists each missing or changed name.
    """

    def __init__(self, library: str, found: str, problems: list[str]) -> None:
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{library} {found} is not the version the gateway was built and tested with:\n{lines}")
        self.library = library
        self.found = found
        self.problems = problems
