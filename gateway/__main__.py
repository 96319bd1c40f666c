"""`python -m gateway` and the `edge-gateway` script: the command line lives in gateway/cli/ (one module each)."""

from __future__ import annotations

import sys

from gateway.cli import main
from gateway.cli.common import DEFAULT_CONFIG, EXAMPLE_CONFIG, EXIT_CONFIG, EXIT_STARTUP

__all__ = ["DEFAULT_CONFIG", "EXAMPLE_CONFIG", "EXIT_CONFIG", "EXIT_STARTUP", "main"]

if __name__ == "__main__":
    sys.exit(main())
