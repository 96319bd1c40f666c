"""Counters and gauges, cheap enough for the per-message path; read by /metrics and /health.

An increment is a dict update of a plain number: counters stay integers (``readingsCommitted`` is 12,
not 12.0) unless a caller adds a fraction. The Prometheus text format is made at scrape time from
:meth:`Metrics.families` by prometheus-client (gateway/web/metrics_route.py), which is imported only
then: a prometheus-client Counter's ``labels(...).inc()`` costs several times a dict update (a lock and a
label lookup per call), and its import adds ~1 MB to the daemon. One `Metrics` object is created by the
composition root and handed to whoever counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

LabelKey = tuple[tuple[str, str], ...]
Number = int | float
Kind = Literal["counter", "gauge"]


@dataclass(slots=True)
class Family:
    kind: Kind
    help: str
    values: dict[LabelKey, Number] = field(default_factory=dict)


class Metrics:
    def __init__(self) -> None:
        self._families: dict[str, Family] = {}
        self._gauge_callbacks: dict[str, tuple[str, Callable[[], float]]] = {}

    def _family(self, name: str, kind: Kind, help_text: str) -> Family:
        fam = self._families.get(name)
        if fam is None:
            fam = self._families[name] = Family(kind, help_text)
        return fam

    def inc(self, name: str, amount: Number = 1, help_text: str = "", **labels: str) -> None:
        fam = self._families.get(name) or self._family(name, "counter", help_text)
        key = _key(labels) if labels else ()
        values = fam.values
        values[key] = values.get(key, 0) + amount

    def set(self, name: str, value: Number, help_text: str = "", **labels: str) -> None:
        fam = self._families.get(name) or self._family(name, "gauge", help_text)
        fam.values[_key(labels) if labels else ()] = value

    def gauge_callback(self, name: str, func: Callable[[], float], help_text: str = "") -> None:
        """A gauge read only when metrics are scraped (queue depths, connected clients)."""
        self._gauge_callbacks[name] = (help_text, func)

    def value(self, name: str, **labels: str) -> Number:
        fam = self._families.get(name)
        if fam is None:
            cb = self._gauge_callbacks.get(name)
            return cb[1]() if cb else 0
        return fam.values.get(_key(labels) if labels else (), 0)

    def total(self, name: str) -> Number:
        """Sum over all label sets of a family."""
        fam = self._families.get(name)
        return sum(fam.values.values()) if fam else 0

    def families(self) -> Iterator[tuple[str, Family]]:
        """Every family by name, the callback gauges read now (a snapshot for one scrape)."""
        for name, fam in sorted(self._families.items()):
            yield name, Family(fam.kind, fam.help, dict(fam.values))
        for name, (help_text, func) in sorted(self._gauge_callbacks.items()):
            yield name, Family("gauge", help_text, {(): func()})


def _key(labels: dict[str, str]) -> LabelKey:
    """Label pairs in name order (one label, the common case, needs no sort)."""
    return tuple(labels.items()) if len(labels) == 1 else tuple(sorted(labels.items()))
