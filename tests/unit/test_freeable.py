"""What the host could free now (issue 23, item 3): the guests' memory above their bands' low lines that QEMU
backs, and the sum of their floors; published in the state file, `memcoord status` and the metrics."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from memcoord.admin import status
from memcoord.core.config import parse
from memcoord.core.model import Band, DomainStats, HostStats, Snapshot, mib_to_kib
from memcoord.core.room import Reservation, floors_kib, freeable_kib
from memcoord.daemon.observe import Observer
from memcoord.daemon.service import Service
from memcoord.sim.host import SimGuest, SimulatedHypervisor

MIB = mib_to_kib(1)
OVERHEAD_KIB = mib_to_kib(128)


def _dom(name: str, current_mib: int, rss_mib: int | None) -> DomainStats:
    rss_kib = None if rss_mib is None else mib_to_kib(rss_mib) + OVERHEAD_KIB
    return DomainStats(name, mib_to_kib(current_mib), mib_to_kib(4096), rss_kib=rss_kib)


def test_freeable_is_the_backed_memory_above_each_band_low_and_floors_are_summed() -> None:
    bands = {
        "backed": Band(mib_to_kib(256), mib_to_kib(1024), mib_to_kib(1500), mib_to_kib(4096)),
        "untouched": Band(mib_to_kib(512), mib_to_kib(1024), mib_to_kib(1500), mib_to_kib(4096)),
        "half": Band(mib_to_kib(128), mib_to_kib(1024), mib_to_kib(1500), mib_to_kib(4096)),
        "no-rss": Band(0, mib_to_kib(1024), mib_to_kib(1500), mib_to_kib(4096)),
        "below-low": Band(0, mib_to_kib(2048), mib_to_kib(2048), mib_to_kib(4096)),
    }
    snapshot = Snapshot(
        taken_at_s=1_000_000.0,
        host=HostStats(available_kib=mib_to_kib(8192), total_kib=mib_to_kib(16384)),
        domains=(
            _dom("backed", 2048, 2048),  # 1024 above low, all backed
            _dom("untouched", 2048, 300),  # 1024 above low, none of it backed: the host gains nothing
            _dom("half", 2048, 1536),  # 512 of the 1024 above low backed
            _dom("no-rss", 1536, None),  # no RSS figure: its balloon above low
            _dom("below-low", 1024, 1024),
            _dom("unmanaged", 4096, 4096),  # no band: memcoord does not touch it
        ),
    )
    assert freeable_kib(snapshot, bands, OVERHEAD_KIB) == mib_to_kib(1024 + 0 + 512 + 512 + 0)
    assert floors_kib(bands) == mib_to_kib(256 + 512 + 128)


def _idle_host() -> SimulatedHypervisor:
    """Three idle 4 GiB guests: two holding page cache QEMU backs, one whose free memory was never touched."""
    guests = [SimGuest(n, max_kib=mib_to_kib(4096), target_kib=mib_to_kib(4096), overhead_kib=OVERHEAD_KIB)
              for n in ("cache-1", "cache-2", "untouched")]  # fmt: skip
    for g, cache_mib in zip(guests, (3000, 2000, 0), strict=True):
        g.cache_kib = mib_to_kib(cache_mib)
        g.rss_kib = g.used_kib + g.cache_kib
    return SimulatedHypervisor(guests, host_total_kib=mib_to_kib(24576))


def test_relief_frees_what_the_status_said_it_could(tmp_path: Path) -> None:
    """The figure is a promise: asked for more than the host has, relief gives the host that much back, no more,
    and takes no guest below its low line."""
    sim = _idle_host()
    cfg_path = tmp_path / "memcoord.toml"
    cfg_path.write_text(f'[status]\npath = "{tmp_path / "state.json"}"\n[host]\ntarget_available_mib = 2048\n')
    service = Service(cfg_path, parse(cfg_path.read_text(), cfg_path), lambda _uri: sim, observer=Observer())
    for _ in range(5):
        sim.advance(1.0)
        service.tick()
    view = service.observer.view
    assert view is not None
    host = view["host"]
    free_kib, floors = host["freeable_kib"], host["floors_kib"]
    assert floors == 3 * mib_to_kib(256)  # the default floor (guest.min_mib)
    # Nothing above low is backed on the untouched guest: a figure that counted balloons would say ~11 GiB.
    assert mib_to_kib(4000) < free_kib < mib_to_kib(5000), free_kib

    lines = status.render(view, now_s=view["updated_at_s"])
    # README's example ("What the host could free") is this line.
    assert "could free 4588 MiB now without any guest below its low line; guests' floors sum to 768 MiB" in lines
    exposed = {f.name: f.samples[0].value for f in text_string_to_metric_families(
        service.observer.endpoint.text().decode()) if f.samples}  # fmt: skip
    assert exposed["memcoord_host_freeable_bytes"] == free_kib * 1024
    assert exposed["memcoord_guest_floors_bytes"] == floors * 1024

    available_before_kib = sim.host_available_kib()
    lows = dict(service.observer.plan.bands) if service.observer.plan else {}
    service.room.reservations.append(Reservation(mib_to_kib(24576), None, service.clock() + 3600))
    for _ in range(60):
        sim.advance(1.0)
        service.tick()
    gained_kib = sim.host_available_kib() - available_before_kib
    # Relief stops at each guest's low; the low lines themselves do not move for idle guests.
    assert abs(gained_kib - free_kib) <= mib_to_kib(16), (gained_kib, free_kib)
    for name, g in sim.guests.items():
        assert g.current_kib >= lows[name].low_kib - MIB, (name, g.current_kib, lows[name])
    assert service.observer.view is not None
    assert service.observer.view["host"]["freeable_kib"] <= mib_to_kib(16)
