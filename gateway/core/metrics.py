"""Counters and gauges, cheap enough for the per-message path, rendered in Prometheus text format.

prometheus_client costs ~14 MB of RSS on import; a dict increment is all the hot path needs.
One `Metrics` object is created by the composition root and handed to whoever counts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

LabelKey = tuple[tuple[str, str], ...]


@dataclass(slots=True)
class _Family:
    kind: str  # "counter" | "gauge"
    help: str
    values: dict[LabelKey, float] = field(default_factory=dict)


class Metrics:
    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}
        self._gauge_callbacks: dict[str, tuple[str, Callable[[], float]]] = {}

    def _family(self, name: str, kind: str, help_text: str) -> _Family:
        fam = self._families.get(name)
        if fam is None:
            fam = self._families[name] = _Family(kind, help_text)
        return fam

    def inc(self, name: str, amount: float = 1.0, help_text: str = "", **labels: str) -> None:
        fam = self._family(name, "counter", help_text)
        key = tuple(sorted(labels.items())) if labels else ()
        fam.values[key] = fam.values.get(key, 0.0) + amount

    def set(self, name: str, value: float, help_text: str = "", **labels: str) -> None:
        fam = self._family(name, "gauge", help_text)
        fam.values[tuple(sorted(labels.items())) if labels else ()] = value

    def gauge_callback(self, name: str, func: Callable[[], float], help_text: str = "") -> None:
        """A gauge read only when metrics are rendered (queue depths, connected clients)."""
        self._gauge_callbacks[name] = (help_text, func)

    def value(self, name: str, **labels: str) -> float:
        fam = self._families.get(name)
        if fam is None:
            cb = self._gauge_callbacks.get(name)
            return cb[1]() if cb else 0.0
        return fam.values.get(tuple(sorted(labels.items())) if labels else (), 0.0)

    def total(self, name: str) -> float:
        """Sum over all label sets of a family."""
        fam = self._families.get(name)
        return sum(fam.values.values()) if fam else 0.0

    def render(self) -> str:
        lines: list[str] = []
        for name, fam in sorted(self._families.items()):
            if fam.help:
                lines.append(f"# HELP {name} {fam.help}")
            lines.append(f"# TYPE {name} {fam.kind}")
            for key, val in sorted(fam.values.items()):
                label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in key)
                lines.append(f"{name}{{{label_text}}} {val:g}" if key else f"{name} {val:g}")
        for name, (help_text, func) in sorted(self._gauge_callbacks.items()):
            if help_text:
                lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} gauge")
            lines.append(f"{name} {func():g}")
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
