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
