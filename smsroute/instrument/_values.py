"""Metric values kept in plain Python objects, read by a collector at scrape time.

prometheus_client's metrics take a lock and check their arguments on every
change, which costs microseconds that ``Router.send`` pays per message.  Here a
change is one addition: a router's events all come from its event loop's
thread, and a scrape (from that thread, or prometheus_client's HTTP server
thread) only reads.  :class:`Family` offers the part of prometheus_client's
metric API the Prometheus hook uses (``labels()``, ``remove()``, and ``inc``,
``dec``, ``set``, ``observe`` on a child), so the hook works with either.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector


class Value:
    """A counter's or gauge's value."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value


class Buckets:
    """A histogram's counts per bucket (not cumulative; the last is +Inf) and sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount


class Family:
    """One metric and its children by label values; the API of prometheus_client's
    metrics that the hook uses (``labels``, ``remove``), without their locks."""

    def __init__(
        self,
        kind: str,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: tuple[float, ...] = (),
    ) -> None:
        self.kind = kind
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.buckets = buckets
        self.le = [*(repr(float(b)) for b in buckets), "+Inf"]
        self.children: dict[tuple[str, ...], Any] = {}

    def labels(self, *values: str) -> Any:
        child = self.children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
            child = Buckets(self.buckets) if self.kind == "histogram" else Value()
            self.children[values] = child
        return child

    def remove(self, *values: str) -> None:
        """Drop the child with these label values (KeyError if there is none)."""
        del self.children[values]

    def metric(self, *, empty: bool = False) -> Metric:
        """The family as prometheus_client exposes it (``empty``: names only, to describe)."""
        name, documentation, labels = self.name, self.documentation, self.labelnames
        # list(): a scrape from another thread must not see the dict change size.
        children = [] if empty else list(self.children.items())
        if self.kind == "histogram":
            histogram = HistogramMetricFamily(name, documentation, labels=labels)
            for values, child in children:
                total, cumulative = 0, []
                for le, count in zip(self.le, list(child.counts), strict=True):
                    total += count
                    cumulative.append((le, float(total)))
                histogram.add_metric(list(values), cumulative, child.sum)
            return histogram
        family = (
            CounterMetricFamily(name, documentation, labels=labels)
            if self.kind == "counter"
            else GaugeMetricFamily(name, documentation, labels=labels)
        )
        for values, child in children:
            family.add_metric(list(values), child.value)
        return family


class LiveGauge(Family):
    """A gauge whose values are read at scrape time: ``read()`` gives (label values, value)
    pairs, the values of pairs with the same labels adding up."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        read: Callable[[], Iterable[tuple[tuple[str, ...], float]]],
    ) -> None:
        super().__init__("gauge", name, documentation, labelnames)
        self.read = read

    def metric(self, *, empty: bool = False) -> Metric:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        if empty:
            return family
        values: dict[tuple[str, ...], float] = {}
        for labels, value in self.read():
            values[labels] = values.get(labels, 0.0) + value
        for labels, value in values.items():
            family.add_metric(list(labels), value)
        return family


class ValuesCollector(Collector):
    """Registered in a registry: yields the families' current values at each scrape."""

    def __init__(self, families: list[Family]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            yield family.metric()

    def describe(self) -> Iterator[Metric]:
        for family in self.families:
            yield family.metric(empty=True)
