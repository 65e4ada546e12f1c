"""One lab run: guests + the real memcoord + the timeline recorder, torn down as one unit.

`make demo` and every acceptance scenario are a LabRun plus a workload; keeping the wiring
here means the demo shows exactly what the tests check.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from lab.coordinator import CoordinatorAction, Memcoord, lab_config
from lab.image import GuestImage
from lab.lab import Lab
from lab.timeline import ACTION_EVENT, Recorder, Timeline
from memcoord.core.model import kib_to_mib, mib_to_kib

MEMCOORD_STALL_S = 4.0  # no tick for this long (interval 1 s) means memcoord's loop was held up


class LabRun:
    """Context manager: boots the lab and starts recording; `start_memcoord` when the baseline is taken."""

    def __init__(
        self,
        prefix: str,
        out_dir: Path,
        n: int = 4,
        max_mib: int = 2048,
        current_mib: int = 512,
        image: GuestImage | None = None,
        sample_interval_s: float = 1.0,
        title: str = "memcoord lab",
        disk_guests: Collection[int] = (),
        autodeflate_guests: Collection[int] = (),
    ) -> None:
        """disk_guests: 1-based indexes of the guests with the readonly disk (page-cache readers);
        autodeflate_guests: those whose balloon deflates on their own OOM (`<memballoon autodeflate='on'>`)."""
        self.out_dir = out_dir
        self.lab = Lab(
            prefix=prefix,
            n=n,
            max_mib=max_mib,
            current_mib=current_mib,
            image=image,
            disk_guests=disk_guests,
            autodeflate_guests=autodeflate_guests,
        )
        self.sample_interval_s = sample_interval_s
        self.title = title
        self.memcoord: Memcoord | None = None
        self.recorder: Recorder | None = None
        self.saved: list[Path] = []

    def __enter__(self) -> LabRun:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.lab.up()
        try:
            self.recorder = Recorder(
                self.lab,
                self.sample_interval_s,
                coordinator_alive=lambda: self.memcoord is not None and self.memcoord.alive(),
                meta={"title": self.title, "prefix": self.lab.prefix, "n": self.lab.n},
            )
            self.recorder.start()
        except BaseException:
            self.lab.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def timeline(self) -> Timeline:
        assert self.recorder is not None
        return self.recorder.timeline

    def t_s(self) -> float:
        """Now, on the timeline's clock."""
        assert self.recorder is not None
        return self.recorder.t_s()

    def mark(self, kind: str, guest: str | None = None, **data: Any) -> None:
        assert self.recorder is not None
        self.recorder.mark(kind, guest, **data)

    def guard_allowing_mib(self, growth_mib: int, overhead_mib: int = 128) -> int:
        """A host.min_available_mib under which the balloons can grow about growth_mib beyond their sizes now,
        with every guest's programs filling what it has.

        memcoord's guard only keeps back what it granted; memory a guest already has but QEMU never backed
        (its free pages, plus QEMU's own overhead) reaches the host only when the guest touches it. A hog does
        exactly that, so the scenario's guard keeps it back too: the guard then binds at ~growth_mib of balloon
        growth, as the scenario means.
        """
        import psutil

        from memcoord.hypervisor.libvirt import domain_stats

        vm = psutil.virtual_memory()
        doms = [d for name, s in self.lab.balloon_stats().items() if (d := domain_stats(name, s)) is not None]
        overhead_kib = mib_to_kib(overhead_mib)
        unbacked_kib = 0
        for d in doms:
            not_backed_kib = max(0, d.current_kib + overhead_kib - (d.rss_kib or 0))
            unbacked_kib += not_backed_kib if d.unused_kib is None else min(d.unused_kib, not_backed_kib)
        return int(kib_to_mib(vm.available // 1024 - unbacked_kib) - growth_mib)

    def start_memcoord(self, overrides: dict[str, Any] | None = None, extra_args: list[str] | None = None) -> Memcoord:
        """Start `memcoord run` with the shipped config restricted to this lab (plus overrides)."""
        config = lab_config(self.lab.domain_glob, overrides)

        def on_action(a: CoordinatorAction) -> None:
            self.mark(
                ACTION_EVENT,
                a.domain,
                t_mono_s=a.t_mono_s,
                action=a.action,
                from_mib=a.from_mib,
                to_mib=a.to_mib,
                reason=a.reason,
                rule=a.rule,
            )

        hypervisor_error: list[str | None] = [None]  # the previous tick's (None: reachable)

        def on_tick(t_mono_s: float, line: dict[str, Any]) -> None:
            error = line.get("error")
            if error is not None and hypervisor_error[0] is None:  # one mark per loss, not per retry
                self.mark("memcoord_lost_hypervisor", t_mono_s=t_mono_s, error=error)
            hypervisor_error[0] = error

        last_status_mono_s: list[float] = []  # the previous tick's report (none before the first)

        def on_status(t_mono_s: float, _status: str) -> None:
            if not last_status_mono_s:
                last_status_mono_s.append(t_mono_s)
                return
            gap_s = t_mono_s - last_status_mono_s[0]
            if gap_s > MEMCOORD_STALL_S:
                # memcoord's bulk stats call covers every domain on the host, so a foreign guest that
                # is starting or stopped can hold its loop up; record it next to the libvirt outages.
                self.mark("memcoord_stall", t_mono_s=last_status_mono_s[0], gap_s=round(gap_s, 1))
            last_status_mono_s[0] = t_mono_s

        self.memcoord = Memcoord(
            config, self.out_dir, extra_args=extra_args, on_action=on_action, on_tick=on_tick, on_status=on_status
        )
        meta = self.timeline.meta
        meta["config"] = config
        meta["floor_mib"] = config["guest"]["min_mib"]
        meta["host_min_available_mib"] = config["host"]["min_available_mib"]
        self.memcoord.start()
        self.mark("memcoord_start")
        return self.memcoord

    def reload_memcoord(self, overrides: dict[str, Any]) -> None:
        """New overrides on top of the lab config, applied with memcoord's SIGHUP reload."""
        assert self.memcoord is not None
        config = lab_config(self.lab.domain_glob, overrides)
        self.memcoord.reload(config)
        self.timeline.meta["config"] = config
        self.timeline.meta["host_min_available_mib"] = config["host"]["min_available_mib"]
        self.mark("memcoord_reload", overrides=overrides)

    def wait_until(self, predicate: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.5) -> float:
        """Poll until predicate() holds; returns the seconds waited, raises TimeoutError naming `what`."""
        t0 = time.monotonic()
        while not predicate():
            if self.memcoord is not None and self.memcoord.timeline_errors:
                raise RuntimeError(f"memcoord's timeline could not be read: {self.memcoord.timeline_errors[:3]}")
            if self.memcoord is not None and not self.memcoord.alive():
                raise RuntimeError(
                    f"memcoord exited ({self.memcoord.proc and self.memcoord.proc.returncode}) while waiting for {what}"
                )
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"{what}: not reached within {timeout_s:.0f} s")
            time.sleep(poll_s)
        return time.monotonic() - t0

    def latest(self) -> dict[str, dict[str, Any]]:
        assert self.recorder is not None
        return self.recorder.latest()

    def close(self) -> None:
        """Stop recording, stop memcoord, keep logs, tear the guests down, write the timeline. Idempotent."""
        if self.recorder is not None:
            self.recorder.stop()
        if self.memcoord is not None:
            rc = self.memcoord.stop()
            self.timeline.meta["memcoord_exit_code"] = rc
            self.timeline.meta["memcoord_timeline_errors"] = self.memcoord.timeline_errors
        for g in self.lab.guests:
            with contextlib.suppress(OSError):
                shutil.copyfile(g.console.log_path, self.out_dir / g.console.log_path.name)
        self.lab.down()
        if self.recorder is not None and not self.saved:
            self.saved = self.timeline.save(self.out_dir)
