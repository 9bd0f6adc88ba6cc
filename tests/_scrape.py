"""Read one number off a real /metrics page, summed over the series that match."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["metric"]


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of sample `name` over every series whose labels include `labels` (0 if none)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    wanted = set(labels.items())
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == name and wanted <= set(sample.labels.items()))
