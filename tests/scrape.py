"""Scraping ``/metrics`` in tests: the samples, summed over the ``worker`` label."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TIMEOUT


@dataclass
class Scrape:
    #: Every sample: (name, sorted label pairs) -> value.
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]
    #: Family names with their type.
    families: dict[str, str]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples named ``name`` whose labels include ``labels`` (so summed over
        ``worker`` and any other label not given); 0 when there is none."""
        wanted = set(labels.items())
        return sum(
            value
            for (sample, pairs), value in self.samples.items()
            if sample == name and wanted <= set(pairs)
        )

    def has(self, name: str) -> bool:
        return any(sample == name for sample, _ in self.samples)

    def label_values(self, name: str, label: str) -> set[str]:
        return {
            dict(pairs)[label]
            for sample, pairs in self.samples
            if sample == name and label in dict(pairs)
        }


def parse(text: str) -> Scrape:
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    families: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return Scrape(samples, families)


async def scrape(base: str, client: httpx.AsyncClient | None = None) -> Scrape:
    """``GET {base}/metrics``, parsed; with a new client unless given one (making an
    ``httpx.AsyncClient`` loads CA certificates, which blocks the event loop for a moment)."""
    if client is None:
        async with httpx.AsyncClient(timeout=TIMEOUT) as new_client:
            response = await new_client.get(f"{base}/metrics")
    else:
        response = await client.get(f"{base}/metrics")
    response.raise_for_status()
    return parse(response.text)
