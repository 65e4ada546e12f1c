"""The hypervisor for a URI: libvirt, or the simulated host for `sim:` URIs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from memcoord.core.port import Hypervisor

if TYPE_CHECKING:
    from memcoord.hypervisor.domain_settings import MetadataValidator


def connect(uri: str, validate_metadata: MetadataValidator | None = None) -> Hypervisor:
    """The adapter for a URI: `sim:` runs a simulated host in real time, anything else is libvirt.

    `sim:///demo` (or any other sim: URI) is the built-in three-guest host; `sim:///PATH.toml` builds the host
    of a `memcoord simulate` scenario file, e.g. a hundred guests to measure a scrape, or a guest that stays
    starving (the Prometheus tests use both).

    validate_metadata: how the libvirt adapter checks a domain's memcoord metadata (default: in this process,
    with pydantic; `memcoord run` passes a ChildMetadataValidator). The simulated host has no XML to check."""
    if uri.startswith("sim:"):
        path = uri.removeprefix("sim://")
        if path.endswith(".toml"):
            from memcoord.sim.scenario import build_host, load_scenario

            return build_host(load_scenario(path), realtime=True)
        from memcoord.sim.host import demo_host

        return demo_host(realtime=True)
    from memcoord.hypervisor.libvirt import LibvirtHypervisor

    if validate_metadata is None:
        return LibvirtHypervisor(uri)
    return LibvirtHypervisor(uri, validate_metadata)


def known_domain_names(uri: str, timeout_s: float) -> set[str]:
    """Every domain at uri, running or defined, for `check-config`: a read-only connection that gives up after
    timeout_s. HypervisorError says why when the names cannot be had."""
    if uri.startswith("sim:"):
        return connect(uri).domain_names()
    from memcoord.hypervisor.libvirt import defined_domain_names

    return defined_domain_names(uri, timeout_s)
