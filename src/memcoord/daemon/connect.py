"""The hypervisor for a URI: libvirt, or the simulated host for `sim:` URIs."""

from __future__ import annotations

from memcoord.core.port import Hypervisor


def connect(uri: str) -> Hypervisor:
    """The adapter for a URI: `sim:` runs a simulated host in real time, anything else is libvirt.

    `sim:///demo` (or any other sim: URI) is the built-in three-guest host; `sim:///PATH.toml` builds the host
    of a `memcoord simulate` scenario file, e.g. a hundred guests to measure a scrape, or a guest that stays
    starving (the Prometheus tests use both)."""
    if uri.startswith("sim:"):
        path = uri.removeprefix("sim://")
        if path.endswith(".toml"):
            from memcoord.sim.scenario import build_host, load_scenario

            return build_host(load_scenario(path), realtime=True)
        from memcoord.sim.host import demo_host

        return demo_host(realtime=True)
    from memcoord.hypervisor.libvirt import LibvirtHypervisor

    return LibvirtHypervisor(uri)


def known_domain_names(uri: str, timeout_s: float) -> set[str]:
    """Every domain at uri, running or defined, for `check-config`: a read-only connection that gives up after
    timeout_s. HypervisorError says why when the names cannot be had."""
    if uri.startswith("sim:"):
        return connect(uri).domain_names()
    from memcoord.hypervisor.libvirt import defined_domain_names

    return defined_domain_names(uri, timeout_s)
