"""The benchmarked gateway process imports no test machinery: pytest alone would add ~7 MB to its RSS, greenlet 1.2."""

from __future__ import annotations

import subprocess
import sys

from tests.bench.common import REPO


def test_the_gateway_probe_imports_neither_pytest_nor_greenlet() -> None:
    probe = ("import sys, tests.bench.gateway_probe; "
             "print(sorted(m for m in ('pytest', '_pytest', 'greenlet') if sys.modules.get(m)))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
