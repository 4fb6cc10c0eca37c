"""A group's objective: the metric that makes one of its jobs the best, and which way."""

from __future__ import annotations

from dataclasses import dataclass

from caliban_flows.spec.errors import SpecError


@dataclass(frozen=True)
class Objective:
    metric: str
    maximize: bool = True

    def __str__(self) -> str:
        return f"{self.metric}:{'max' if self.maximize else 'min'}"


def parse_objective(text: str, flag: str = "--objective") -> Objective:
    """`METRIC`, `METRIC:max` or `METRIC:min` (SpecError otherwise)."""
    metric, _, way = text.rpartition(":")
    if way not in ("max", "min"):  # a metric name may hold a colon itself
        metric, way = text, "max"
    metric = metric.strip()
    if not metric:
        raise SpecError(f"{flag} {text!r}: give METRIC, METRIC:max or METRIC:min")
    return Objective(metric, way == "max")
