"""Reading what a Prometheus scrape of memcoord returns: over HTTP(S), and its samples by metric and domain."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def samples(text: str) -> dict[str, list[Sample]]:
    """Every sample, by sample name (counters appear as *_total, histograms as *_bucket/_sum/_count)."""
    out: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append(s)
    return out


def by_domain(found: dict[str, list[Sample]], name: str) -> dict[str, float]:
    return {s.labels["domain"]: s.value for s in found.get(name, [])}


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def scrape_tls(port: int, ca: Path, cert: tuple[Path, Path] | None) -> str:
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", timeout=5, context=context) as response:
        return response.read().decode()
