"""``GET /metrics``: the gateway's counters and gauges in Prometheus text format, through prometheus-client.

The gateway counts in its own :class:`~gateway.core.metrics.Metrics` (a dict update per event, cheap on
the per-message path); a prometheus-client collector turns a snapshot of it into metric families at
scrape time, and prometheus-client's own ``ProcessCollector`` adds the process's open files, memory and
CPU (``process_open_fds``, ``process_resident_memory_bytes``, ...). prometheus-client is imported on the
first scrape: a gateway nobody scrapes does not carry it (measured: +1.1 MB RSS and ~50 ms on top of the
daemon's imports).

What is there (besides the process): readings and messages ingested (``gateway_readings_committed_total``,
``gateway_ingest_messages_total{channel}``), quarantine by reason class (``gateway_quarantined_total
{reason}``), the outbox's depth and oldest unsent row (``gateway_uplink_backlog_rows``,
``gateway_outbox_oldest_unsent_age_seconds``), the cloud link (``gateway_uplink_connected``,
``gateway_uplink_reconnects_total``), command outcomes (``gateway_commands_finished_total{status}``),
broker clients (``gateway_broker_clients_connected``) and event-loop lag
(``gateway_event_loop_lag_seconds``, ``..._max_seconds``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from gateway.core.metrics import Family, Metrics
from gateway.web.aiohttp_web import web
from gateway.web.api import Call
from gateway.web.openapi import Reply, Route

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry


class GatewayCollector:
    """A prometheus-client collector over a :class:`Metrics` (read at each scrape)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

        for name, fam in self._metrics.families():
            names = _label_names(fam)
            family = (CounterMetricFamily(name, fam.help, labels=names) if fam.kind == "counter"
                      else GaugeMetricFamily(name, fam.help, labels=names))
            for key, value in sorted(fam.values.items()):
                labels = dict(key)
                family.add_metric([labels.get(n, "") for n in names], value)
            yield family


def _label_names(fam: Family) -> list[str]:
    return sorted({label for key in fam.values for label, _ in key})


class MetricsExposition:
    """The text of one scrape; the registry (and prometheus-client) is made at the first."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._registry: CollectorRegistry | None = None
        self.content_type = ""

    def render(self) -> bytes:
        from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

        if self._registry is None:
            from prometheus_client.process_collector import ProcessCollector
            from prometheus_client.registry import CollectorRegistry

            registry = CollectorRegistry(auto_describe=False)
            registry.register(GatewayCollector(self._metrics))
            ProcessCollector(registry=registry)
            self._registry = registry
        self.content_type = CONTENT_TYPE_LATEST
        return generate_latest(self._registry)


METRICS = web.AppKey("edge_gateway_metrics", MetricsExposition)


async def metrics(call: Call) -> web.StreamResponse:
    exposition = call.request.app[METRICS]
    body = exposition.render()
    return web.Response(body=body, headers={"Content-Type": exposition.content_type})


METRICS_ROUTES: tuple[Route, ...] = (
    Route("GET", "/metrics", metrics, "Counters and gauges in Prometheus text format", "gateway",
          {200: Reply("Prometheus text exposition format (text/plain)")}),
)
