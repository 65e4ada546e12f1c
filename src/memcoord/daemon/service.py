"""The imperative shell: the tick loop, signals, config reload, sd_notify and the journal.

It knows nothing of the algorithm: each tick is `step.step` (the loop the simulator runs too), and this
module reports around it. Signal handlers only set flags; the loop
acts on them between ticks, so a reload or a stop never lands in the middle of applying a plan. The sleep
between ticks waits on a pipe that the interpreter writes the signal number to (signal.set_wakeup_fd, from its C
handler): a handler that took a lock instead (threading.Event.set) deadlocks when the signal lands while the main
thread holds that very lock, inside the sleep.

The service's own timing (the tick's deadline, how long a guest's stats have been missing) reads one injected
monotonic clock, so a test drives it with a fake clock and a simulated hypervisor, and a wall-clock jump
changes nothing. In dry run the step acts on a `DryRunHypervisor` over the real one: it keeps the targets dry
run would have set, so successive ticks show the path each guest would take.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from memcoord.core.config import Config, ConfigError
from memcoord.core.config import load as load_config
from memcoord.core.model import ApplyResult, GuestClass, Plan, Snapshot, kib_to_mib
from memcoord.core.policy import PolicyState, no_progress_pause_s
from memcoord.core.port import Hypervisor, HypervisorError
from memcoord.core.step import StepResult, step
from memcoord.daemon import journal, memory
from memcoord.daemon.notify import Notifier
from memcoord.daemon.observe import Observer
from memcoord.daemon.room import RoomDesk
from memcoord.hypervisor.domain_settings import warn_unmatched_overrides
from memcoord.hypervisor.dry_run import DryRunHypervisor

log = logging.getLogger("memcoord")

BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 30.0
RELIEF_WARN_TICKS = 5
# One deadline per tick for all its libvirt calls, so that a tick always fits systemd's watchdog however many
# calls hang: 40 % of WatchdogSec (12 s of the unit's 30 s) leaves the loop time to ping before the watchdog
# fires even when a tick is slow; 12 s without a watchdog.
TICK_BUDGET_S = 12.0
TICK_BUDGET_WATCHDOG_SHARE = 0.4


class Episodes:
    """Troubles the journal reports once when they start and once when they end, however many ticks they last:
    one per key (a guest's name), or one in all (key None)."""

    def __init__(self) -> None:
        self._open: set[str | None] = set()

    def start(self, key: str | None = None) -> bool:
        """True when the trouble starts now (report it); False while it lasts."""
        if key in self._open:
            return False
        self._open.add(key)
        return True

    def end(self, key: str | None = None) -> bool:
        """True when a trouble that was on ends now (report the recovery)."""
        if key not in self._open:
            return False
        self._open.discard(key)
        return True

    def forget(self, key: str | None = None) -> None:
        """Drop a trouble without a recovery to report (its guest is gone)."""
        self._open.discard(key)

    def __contains__(self, key: str | None) -> bool:
        return key in self._open


@dataclass(frozen=True)
class Overrides:
    """Command-line settings that win over the file, on start and on every reload."""

    interval_s: float | None = None
    dry_run: bool = False

    def apply(self, config: Config) -> Config:
        loop = config.loop
        if self.interval_s is not None:
            loop = loop.model_copy(update={"interval_s": self.interval_s})
        if self.dry_run:
            loop = loop.model_copy(update={"dry_run": True})
        return config.model_copy(update={"loop": loop})


def _gib(kib: int) -> str:
    return f"{kib / 1024 / 1024:.1f} GiB"


def status_line(
    plan: Plan, snapshot: Snapshot, config: Config, last_action: str, period_failing: Mapping[str, str] = {}
) -> str:
    """One line for `systemctl status`: domains by class, host memory and guard, last action, and the domains
    whose stats period is still being retried."""
    counts = ", ".join(f"{plan.count(c)} {c}" for c in GuestClass if plan.count(c))
    managed = len(plan.classes)
    line = f"{managed} domains" + (f" ({counts})" if counts else "")
    guard_mib = config.guard_mib(snapshot.host.total_kib)
    line += f"; host available {_gib(snapshot.host.available_kib)}, guard {guard_mib} MiB"
    if snapshot.host.reserved_kib:
        line += f"; holding {kib_to_mib(snapshot.host.reserved_kib):.0f} MiB for a VM about to start"
    if plan.host_deficit_kib:
        line += f"; BELOW GUARD by {kib_to_mib(plan.host_deficit_kib):.0f} MiB, relieving"
        if plan.relief_shortfall_kib:
            line += f" (guests can give back {kib_to_mib(plan.relief_shortfall_kib):.0f} MiB too little)"
    if config.loop.dry_run:
        line += "; DRY RUN"
    if period_failing:
        line += f"; stats period not set, retrying: {', '.join(sorted(period_failing))}"
    return f"{line}; last action: {last_action}"


class Service:
    def __init__(
        self,
        config_path: Path,
        config: Config,
        connect: Callable[[str], Hypervisor],
        overrides: Overrides = Overrides(),
        exit_when_idle: bool = False,
        notifier: Notifier | None = None,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config_path = config_path
        # Monotonic seconds: the tick's deadline and how long a guest's stats have been missing. The real
        # adapters compare the deadline with time.monotonic(), the default; a fake clock is for tests on the simulator.
        self.clock = clock
        self.overrides = overrides
        self.config = overrides.apply(config)
        self.connect = connect
        self.exit_when_idle = exit_when_idle
        self.notifier = notifier or Notifier()
        self.hypervisor = connect(self.config.libvirt.uri)
        self._dry_run_view: DryRunHypervisor | None = None
        self.state = PolicyState()
        self.ready = False
        self.ticks = 0
        self.last_action = "none yet"
        self.reload_note = ""
        self._status_line = "starting"
        self._lost = Episodes()  # the hypervisor unreachable
        self._backoff_s = BACKOFF_START_S
        self._should_exit = False
        self._reload_requested = False
        # The loop's alarm clock: a byte in this pipe ends the sleep between ticks (see the module docstring).
        # Opened by run() or install_signal_handlers(), closed when run() ends: a Service only ticked by a test
        # holds no file descriptors.
        self._wake_fds: tuple[int, int] | None = None
        self._wakeup_fd_installed = False
        # make-room: its socket is opened by run() (a Service only ticked by a test listens on nothing).
        self.room = RoomDesk(self.clock)
        self._tick_now = False
        # The domains the last tick sampled: while a domain is being started, only these are sampled (see tick()).
        self._sampled: frozenset[str] | None = None
        self._untrusted_since: dict[str, float] = {}
        self._untrusted = Episodes()  # guests whose stats are missing or stale, past the time a new guest needs
        self._relief_short = Episodes()  # relief short of the host's deficit, for RELIEF_WARN_TICKS or more
        self._short_ticks = 0
        self._period_failing: dict[str, str] = {}
        self._over_deadline = Episodes()  # ticks running out of their deadline
        self._held_back = Episodes()  # ticks whose growths were held back for a failed lowering
        self._balking = Episodes()  # guests that did not give when asked, and give last for a while
        self._balked_at: dict[str, float] = {}  # when each of them last balked (the service's clock)
        self._overrides_checked = False  # [domains."NAME"] names checked against libvirt's (at start, on reload)
        # In dry run, the last decision logged for each guest: the same one is not logged again.
        self._dry_run_logged: dict[str, tuple[str, int, int]] = {}
        # The last setMemory failure logged for each guest: the same one is not logged again every tick.
        self._failing_logged: dict[str, str] = {}
        # Observability (state file, metrics, timeline); a bare Observer only keeps the view in memory.
        self.observer = observer or Observer(publish=False)
        self.observer.configure(config_path, self.config)

    # -- signals -------------------------------------------------------------------------------------------
    # The handlers only set a flag: the interpreter has already written to the wakeup pipe (set_wakeup_fd),
    # which ends the sleep. Nothing here may take a lock, allocate a thread or do I/O.
    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        self._should_exit = True

    def _on_reload(self, signum: int, _frame: FrameType | None) -> None:
        self._reload_requested = True

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop, SIGHUP reloads; call from the main thread (as signal.signal requires)."""
        signal.set_wakeup_fd(self._wake_pipe()[1], warn_on_full_buffer=False)
        self._wakeup_fd_installed = True
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)

    def request_stop(self) -> None:
        """Stop after the current tick, from any thread (what SIGTERM does)."""
        self._should_exit = True
        self._wake()

    def request_reload(self) -> None:
        """Reload before the next tick, from any thread (what SIGHUP does)."""
        self._reload_requested = True
        self._wake()

    def _wake_pipe(self) -> tuple[int, int]:
        if self._wake_fds is None:
            self._wake_fds = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        return self._wake_fds

    def _wake(self) -> None:
        if self._wake_fds is None:
            return  # no loop is sleeping: the flag alone is seen before the next tick
        # A full pipe already holds a wakeup; nothing is lost by dropping this one.
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_fds[1], b"\0")

    # -- reload --------------------------------------------------------------------------------------------
    def reload(self) -> None:
        """Re-read the config file; on any error keep running with the old one and say so."""
        self.notifier.reloading()
        try:
            new = self.overrides.apply(load_config(self.config_path))
        except ConfigError as exc:
            self.reload_note = f"reload failed, still running the previous config: {exc}".replace("\n", "; ")
            log.error(
                "config reload failed, keeping the running config:\n%s", exc, extra=journal.lifecycle("reload-failed")
            )
            self.observer.reload_failed(str(exc))
        else:
            if new.libvirt.uri != self.config.libvirt.uri:
                self.hypervisor.close()
                self.hypervisor = self.connect(new.libvirt.uri)
                self._dry_run_view = None
                # Another host: what the policy remembers (samples, pending targets, recent reclaims) and what
                # the service reported is about the old host's guests, which may share names with the new ones.
                self.state = PolicyState()
                self._untrusted_since.clear()
                self._untrusted = Episodes()
                self._balking = Episodes()
                self._balked_at.clear()
                self._period_failing = {}
                self._lost = Episodes()
                self._backoff_s = BACKOFF_START_S
            if new.loop.dry_run != self.config.loop.dry_run:
                # Into or out of dry run: the policy's pending targets and grants were (or were not) really set.
                self.state = PolicyState()
                self._dry_run_view = None
                self._dry_run_logged.clear()
            self.config = new
            self._overrides_checked = False
            self.observer.configure(self.config_path, new)
            if self._wake_fds is not None:  # running: the socket follows the file
                self.room.configure(new)
            self.reload_note = ""
            log.info("config reloaded from %s", self.config_path, extra=journal.lifecycle("reload-ok"))
        self.notifier.ready()
        self._send_status("" if self.reload_note else f"config reloaded from {self.config_path}")

    def _send_status(self, event: str = "") -> None:
        """STATUS= the last tick's line, a failed reload's note (until a reload works), and the event now."""
        self.notifier.status("; ".join(part for part in (self._status_line, self.reload_note, event) if part))

    # -- one tick ------------------------------------------------------------------------------------------
    def tick_budget_s(self) -> float:
        """Seconds one tick's libvirt calls may take together (see TICK_BUDGET_S)."""
        watchdog_s = self.notifier.watchdog_interval_s()
        return TICK_BUDGET_S if watchdog_s is None else watchdog_s * TICK_BUDGET_WATCHDOG_SHARE

    def _acting_hypervisor(self) -> Hypervisor:
        """The hypervisor the step acts on: the real one, or in dry run the view that keeps its own targets."""
        if not self.config.loop.dry_run:
            return self.hypervisor
        if self._dry_run_view is None or self._dry_run_view.real is not self.hypervisor:
            self._dry_run_view = DryRunHypervisor(self.hypervisor)
        return self._dry_run_view

    def tick(self) -> bool:
        """Sample, decide, apply, report. False when the hypervisor could not be reached."""
        started_s = self.clock()
        budget_s = self.tick_budget_s()
        # A libvirt hook asking for room runs while libvirtd holds the starting domain's lock; a stats call over
        # every domain would wait for it until the hook gives up. Meanwhile only the domains already running are
        # sampled (by handle: nothing waits for the starting one).
        starting = self.room.starting()
        only = None if not starting or self._sampled is None else self._sampled - starting
        try:
            done = step(
                self._acting_hypervisor(),
                self.config,
                self.state,
                deadline_s=started_s + budget_s,
                reserved_kib=self.room.reserved_kib,
                only=only,
            )
        except HypervisorError as exc:
            self.room.answer(None, None)
            if self._lost.start():
                log.error(
                    "lost the hypervisor, retrying with backoff: %s", exc, extra=journal.lifecycle("hypervisor-lost")
                )
            if self.ticks == 0:
                self._status_line = f"{self._waiting()}, retrying: {exc}"
            else:
                self._status_line = f"hypervisor unreachable, retrying: {exc}"
            self._send_status()
            self.observer.tick_failed(str(exc), self.clock() - started_s, next_in_s=self._backoff_s)
            return False
        if self._lost.end():
            log.info(
                "hypervisor reachable again at %s", self.config.libvirt.uri, extra=journal.lifecycle("hypervisor-back")
            )
        self._backoff_s = BACKOFF_START_S
        if not self._overrides_checked:
            self._overrides_checked = warn_unmatched_overrides(self.hypervisor, self.config, started_s + budget_s)
        self.state = done.state
        self._sampled = frozenset(d.name for d in done.snapshot.domains)
        self._report_step(done, started_s, budget_s)
        self.room.answer(done.snapshot, done.headroom_kib)
        if self.exit_when_idle and not done.managed:
            log.info("no running domain to coordinate, exiting (--exit-when-idle)")
            self._should_exit = True
        return True

    def _report_step(self, done: StepResult, started_s: float, budget_s: float) -> None:
        """Journal, STATUS and the observer for one tick that reached the hypervisor."""
        plan, managed = done.plan, list(done.managed)
        # In dry run the step saw its own view; the journal's lines say where guests would go, while STATUS, the
        # state file and the metrics show where they are.
        view = self._dry_run_view if self.config.loop.dry_run else None
        snapshot = view.last_real if view is not None and view.last_real is not None else done.snapshot
        for failure in done.period_failures:
            log.warning("%s", failure)
        self._report_period(dict(self.hypervisor.stats_period_failures()), managed)
        self._report_untrusted(plan, snapshot, self.clock())
        self._report_relief(plan)
        self._report_balking(plan, self.clock())
        for note in plan.notes:
            log.debug("%s", note)
        dry_run = self.config.loop.dry_run
        for result in done.results:
            if dry_run and not self._first_dry_run_log(result):
                continue
            if not self._first_failure_log(result):
                continue
            journal.action(result, dry_run)
        if done.held_back:
            # Said once a spell: a giver whose setMemory keeps failing on a tight host holds growth back each tick.
            log.log(
                logging.INFO if self._held_back.start() else logging.DEBUG,
                "%d growth(s) held back: a lowering this tick counted on failed; decided again next tick",
                done.held_back,
            )
        else:
            self._held_back.end()
        if done.results:
            # The last change that may have landed (lowerings are sent first, the growths after them).
            c = next((r for r in reversed(done.results) if r.may_have_landed), done.results[-1]).change
            self.last_action = (
                f"{c.action} {c.domain} {kib_to_mib(c.from_kib):.0f}->{kib_to_mib(c.to_kib):.0f} MiB"
                f" at {time.strftime('%H:%M:%S')}"
            )
        self.ticks += 1
        if self.ticks == 1:
            log.info("first tick done: %d managed domains", len(managed))
        duration_s = self.clock() - started_s
        deadline_spent = duration_s >= budget_s or done.skipped > 0
        self._report_deadline(deadline_spent, duration_s, budget_s, done.skipped)
        self.observer.tick_done(
            snapshot,
            plan,
            list(done.results),
            duration_s,
            list(done.period_failures),
            period_failing=self._period_failing,
            skipped=done.skipped,
            deadline_spent=deadline_spent,
        )
        self._status_line = status_line(plan, snapshot, self.config, self.last_action, self._period_failing)
        self._send_status()

    def _first_failure_log(self, result: ApplyResult) -> bool:
        """False for a failure that repeats the guest's last one word for word: the policy asks again every tick,
        and a lasting cause (the size record unwritable, a guest refusing setMemory) must not flood the journal.
        The metrics and the state file still count each one."""
        name = result.change.domain
        if result.ok:
            self._failing_logged.pop(name, None)
            return True
        if self._failing_logged.get(name) == result.error:
            return False
        self._failing_logged[name] = result.error or ""
        return True

    def _first_dry_run_log(self, result: ApplyResult) -> bool:
        """True the first time dry run decides this move for this guest; a repeat of the last one is not logged."""
        c = result.change
        key = (str(c.action), c.from_kib, c.to_kib)
        if self._dry_run_logged.get(c.domain) == key:
            return False
        self._dry_run_logged[c.domain] = key
        return True

    def _report_relief(self, plan: Plan) -> None:
        """One warning when relief cannot bring the host back above its guard, one line when it is back.

        Only once the shortfall has lasted RELIEF_WARN_TICKS ticks: right after a start the guests have no
        stats yet, and one tick's shortfall may be covered by balloons still on their way."""
        self._short_ticks = self._short_ticks + 1 if plan.relief_shortfall_kib else 0
        if self._short_ticks >= RELIEF_WARN_TICKS:
            if self._relief_short.start():
                log.warning(
                    "host %.0f MiB below its guard and the guests hold only part of that above their buffers "
                    "(%.0f MiB short): something outside memcoord's guests is using host memory",
                    kib_to_mib(plan.host_deficit_kib),
                    kib_to_mib(plan.relief_shortfall_kib),
                )
        elif not plan.host_deficit_kib and self._relief_short.end():
            log.info("host back above its guard")

    def _waiting(self) -> str:
        return f"waiting for libvirt ({self.config.libvirt.uri}): no tick yet"

    def _report_period(self, failing: dict[str, str], managed: list[str]) -> None:
        """One line when a domain's stats period is finally set (its first failure was logged by the adapter)."""
        for name in set(self._period_failing) - set(failing):
            if name in managed:
                log.info("%s: balloon stats period set after retrying", name)
        self._period_failing = failing

    def _report_deadline(self, spent: bool, duration_s: float, budget_s: float, skipped: int) -> None:
        """One line when ticks start running out of their deadline, one when they fit again."""
        if spent:
            if self._over_deadline.start():
                log.warning(
                    "tick took %.1f s, its deadline is %.1f s: %d setMemory call(s) and any stats period left"
                    " were skipped, to be retried next tick (a guest's QEMU or libvirtd is not answering)",
                    duration_s,
                    budget_s,
                    skipped,
                    extra=journal.lifecycle("deadline-spent"),
                )
        elif self._over_deadline.end():
            log.info("ticks fit their %.1f s deadline again", budget_s, extra=journal.lifecycle("deadline-ok"))

    def _report_untrusted(self, plan: Plan, snapshot: Snapshot, now_s: float) -> None:
        """One line when a guest's balloon stats are missing, stale or impossible (`Plan.refused`) for longer than
        a new guest needs to start reporting (it is left alone meanwhile), one line when they flow again. now_s:
        the service's monotonic clock; how long the stats have been missing is measured on it, not on wall
        time."""
        for name, guest_class in plan.classes.items():
            if not guest_class.trusted:
                since_s = self._untrusted_since.setdefault(name, now_s)
                if now_s - since_s >= self.config.stale_after_s and self._untrusted.start(name):
                    dom = next(d for d in snapshot.domains if d.name == name)
                    if guest_class is GuestClass.BAD_STATS:
                        detail = f"impossible: {plan.refused.get(name)}"
                    elif guest_class is GuestClass.STALE and dom.last_update_s:
                        detail = f"last update {snapshot.taken_at_s - dom.last_update_s:.0f} s ago"
                    else:
                        detail = "no balloon driver or stats period"
                    log.warning("%s: %s balloon stats (%s): left alone until they flow", name, guest_class, detail)
            else:
                self._untrusted_since.pop(name, None)
                if self._untrusted.end(name):
                    log.info("%s: balloon stats flowing again", name)
        for name in set(self._untrusted_since) - set(plan.classes):
            self._untrusted_since.pop(name)
            self._untrusted.forget(name)

    def _report_balking(self, plan: Plan, now_s: float) -> None:
        """One line when a guest starts to give last for not giving when asked, one when it has not balked for a
        whole pause since (a balloon stuck for good balks again each time its pause ends: that is one spell, not a
        line a minute). libvirt's refusals have their own "setMemory failed" lines; a balloon that did not move
        has only this one."""
        pause_s = no_progress_pause_s(self.config)
        for name in plan.classes:
            if name in plan.balking:
                self._balked_at[name] = now_s
                if self._balking.start(name):
                    log.warning(
                        "%s: did not give memory when asked (libvirt refused, or its balloon did not move): it is"
                        " asked after the other guests, for up to %.0f s at a time",
                        name,
                        pause_s,
                    )
            elif name in self._balked_at and now_s - self._balked_at[name] > pause_s:
                del self._balked_at[name]
                if self._balking.end(name):
                    log.info("%s: gives memory as the other guests again (it has not balked for %.0f s)", name, pause_s)
        for name in set(self._balked_at) - set(plan.classes):
            del self._balked_at[name]
            self._balking.forget(name)

    # -- the loop ------------------------------------------------------------------------------------------
    def _sleep(self, seconds: float) -> None:
        """Wait for the next tick, waking early for a signal (or request_stop/request_reload), and serving
        make-room askers meanwhile: a new request ends the wait (`_tick_now`), so that relief starts at once."""
        wake_r = self._wake_pipe()[0]
        until_s = time.monotonic() + seconds
        while True:
            readable, _w, _x = select.select([wake_r, *self.room.fds()], [], [], max(0.0, until_s - time.monotonic()))
            room_fds = set(readable) - {wake_r}
            if room_fds and self.room.handle(room_fds):
                self._tick_now = True
            if wake_r in readable:
                # Empty the pipe: the flags say what happened, however many signals wrote to it.
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_r, 4096):
                        pass
                return
            if not readable or self._tick_now or time.monotonic() >= until_s:
                return

    def run(self) -> int:
        log.info(
            "memcoord starting: %s, every %.1f s, config %s%s",
            self.config.libvirt.uri,
            self.config.loop.interval_s,
            self.config_path,
            " (dry run)" if self.config.loop.dry_run else "",
            extra=journal.lifecycle("started"),
        )
        self._wake_pipe()
        self.room.configure(self.config)
        self.observer.start()
        # Ready as soon as the config is loaded and the loop runs, not after the first tick: with libvirtd down
        # at boot that tick never comes, and `systemctl start` would block until the start timeout and fail.
        # Until the first tick, STATUS and the state file say what the daemon is waiting for.
        self._status_line = self._waiting()
        self._send_status()
        self.ready = True
        self.notifier.ready()
        log.info("ready, config loaded; first tick next", extra=journal.lifecycle("ready"))
        try:
            while not self._should_exit:
                reloaded = self._reload_requested
                if reloaded:
                    self._reload_requested = False
                    self.reload()
                started_s = self.clock()
                self._tick_now = False
                ok = self.tick()
                if (ok and self.ticks == 1) or reloaded:
                    # The start (or the reload) is over: what it needed and no longer does goes back.
                    memory.release()
                self.notifier.watchdog()
                if self._should_exit:
                    break
                if ok:
                    wait_s = self.config.loop.interval_s - (self.clock() - started_s)
                else:
                    wait_s, self._backoff_s = self._backoff_s, min(self._backoff_s * 2, BACKOFF_MAX_S)
                watchdog_s = self.notifier.watchdog_interval_s()
                while wait_s > 0 and not self._should_exit and not self._reload_requested and not self._tick_now:
                    slice_s = min(wait_s, watchdog_s / 2) if watchdog_s else wait_s
                    self._sleep(slice_s)
                    wait_s -= slice_s
                    if wait_s > 0:
                        self.notifier.watchdog()
        finally:
            self._ignore_signals()
            self.notifier.stopping()
            self.observer.stop()
            self.room.close()
            log.info("memcoord stopping after %d ticks", self.ticks, extra=journal.lifecycle("stopping"))
            self.hypervisor.close()
            self._close_wakeup()
        return os.EX_OK

    def _ignore_signals(self) -> None:
        """Stopping: a further stop or reload means nothing now. Ignored (not reset), because the interpreter
        resets Python handlers to the default action as it exits, and a late SIGTERM or SIGHUP would then kill
        the process at its very end (exit "killed by signal" instead of 0)."""
        if self._wakeup_fd_installed:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(signum, signal.SIG_IGN)

    def _close_wakeup(self) -> None:
        # Detach the pipe from the interpreter first: a late signal must not write to a closed (or reused) fd.
        if self._wakeup_fd_installed:
            signal.set_wakeup_fd(-1)
            self._wakeup_fd_installed = False
        fds, self._wake_fds = self._wake_fds, None
        for fd in fds or ():
            with contextlib.suppress(OSError):
                os.close(fd)
