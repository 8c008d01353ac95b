"""Prometheus metrics on netwarden's own registry; labels are bounded (never an IP or pid).

Event-driven counters are updated by :meth:`Metrics.observe`; the components' own counters
(decode errors, kernel drops, lost events, queue drops) are read at scrape time through
``sources``: callables returning ``{stage: count}`` dicts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from netwarden.events import Event, EventType

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

StageCounts = Callable[[], dict[str, int]]


class _Pull(Collector):
    """Counters owned by the components, read when scraped."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        dropped = CounterMetricFamily(
            "netwarden_events_dropped", "Events dropped, by pipeline stage", labels=["stage"]
        )
        for stage, n in self.m.collect_stage(self.m.dropped_sources).items():
            dropped.add_metric([stage], n)
        yield dropped
        errors = CounterMetricFamily(
            "netwarden_errors",
            "Bad packets, vanished processes, unparsable messages: counted and skipped",
            labels=["stage"],
        )
        for stage, n in self.m.collect_stage(self.m.error_sources).items():
            errors.add_metric([stage], n)
        yield errors
        blocked = GaugeMetricFamily("netwarden_blocked_hosts", "Sources blocked now")
        blocked.add_metric([], self.m.blocked_hosts())
        yield blocked
        for name, help_text, fn in self.m.extra_counters:
            c = CounterMetricFamily(name, help_text)
            c.add_metric([], fn())
            yield c


class Metrics:
    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.flows = Counter("netwarden_flows", "Flows seen", ["proto", "direction"], registry=r)
        self.new_connections = Counter(
            "netwarden_new_connections",
            "New TCP connections",
            registry=r,
        )
        self.scans = Counter("netwarden_scans_detected", "Scans detected", ["kind"], registry=r)
        self.attribution = Counter(
            "netwarden_attribution",
            "Flows by how their process was found",
            ["method"],
            registry=r,
        )
        self.probes = Counter(
            "netwarden_probes", "Inbound attempts to closed or dropped ports", registry=r
        )
        self.up = Gauge("netwarden_up", "1 while the daemon runs", registry=r)
        self.up.set(1)
        self.dropped_sources: list[StageCounts] = []
        self.error_sources: list[StageCounts] = []
        self.extra_counters: list[tuple[str, str, Callable[[], float]]] = []
        self.blocked_hosts: Callable[[], int] = lambda: 0
        self._children: dict[tuple[object, ...], tuple[Any, Any]] = {}
        for method in ("kernel", "hold", "socket", "none"):
            self.attribution.labels(method=method)
        for kind in ("port", "sweep"):
            self.scans.labels(kind=kind)
        r.register(_Pull(self))

    @staticmethod
    def collect_stage(sources: list[StageCounts]) -> dict[str, int]:
        out: dict[str, int] = {}
        for fn in sources:
            for stage, n in fn().items():
                out[stage] = out.get(stage, 0) + n
        return out

    def observe(self, e: Event) -> None:
        kind = e.event
        if kind is EventType.NEW:
            key = (e.proto, e.direction, e.attribution)
            children = self._children.get(key)
            if children is None:  # label lookups cost microseconds: once per combination
                children = self._children[key] = (
                    self.flows.labels(proto=e.proto.value, direction=e.direction.value),
                    self.attribution.labels(method=e.attribution.value),
                )
            children[0].inc()
            children[1].inc()
            if e.ipproto == 6:
                self.new_connections.inc()
        elif kind is EventType.SCAN and e.scan is not None and not e.scan.summary:
            # a detection; the periodic summaries of a known scanner are not new ones
            self.scans.labels(kind=str(e.scan.kind)).inc()
        elif kind is EventType.PROBE:
            self.probes.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
