"""Settings that travel with the VM: memcoord metadata and min_guarantee parsed from a domain's libvirt XML, which
source wins, the cache that keeps the adapter from reading every guest's XML every tick, and the warning about
`[domains."NAME"]` tables that name no domain."""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memcoord.admin import status
from memcoord.core.config import Config, ConfigError, DomainOverride, Source, parse
from memcoord.core.model import Action, DomainSettings, Unballoonable, mib_to_kib
from memcoord.core.policy import PolicyState, decide
from memcoord.daemon.observe import Observer
from memcoord.daemon.service import Service
from memcoord.hypervisor.domain_settings import (
    NAMESPACE,
    OLD_NAMESPACES,
    Parsed,
    SettingsCache,
    parse_domain_xml,
    unmatched_overrides,
    warn_unmatched_overrides,
)
from memcoord.sim.host import SimGuest, SimulatedHypervisor
from tests.helpers.snapshots import by_name, dom, snap, steady

BALLOON = "<devices><memballoon model='virtio'/></devices>"


def domain_xml(metadata: str = "", memtune: str = "", devices: str = BALLOON) -> str:
    """A domain's XML as libvirt formats it (virsh dumpxml), with the given metadata, memtune and devices (libvirt
    adds a virtio balloon to a QEMU domain that names none)."""
    return f"""<domain type='qemu' id='3'>
  <name>web1</name>
  <uuid>3c9a5c3e-0000-4000-8000-000000000001</uuid>
  <metadata>
    <other:thing xmlns:other="https://other.example/1"><min_mib>1</min_mib></other:thing>
    {metadata}
  </metadata>
  <memory unit='KiB'>2097152</memory>
  <currentMemory unit='KiB'>524288</currentMemory>
  {memtune}
  {devices}
</domain>"""


def settings_xml(body: str) -> str:
    return f'<memcoord:settings xmlns:memcoord="{NAMESPACE}">{body}</memcoord:settings>'


def with_metadata(**keys: int | bool) -> DomainSettings:
    return DomainSettings(metadata=MappingProxyType(keys))


# -- parsing ---------------------------------------------------------------------------------------------
def test_metadata_as_virsh_writes_it_and_as_an_admin_may():
    prefixed = settings_xml(
        "<memcoord:min_mib>1024</memcoord:min_mib><memcoord:max_mib>4096</memcoord:max_mib>"
        "<memcoord:enabled>false</memcoord:enabled>"
    )
    plain = settings_xml("<min_mib> 1024 </min_mib><max_mib>4096</max_mib><enabled>false</enabled>")
    for body in (prefixed, plain):
        parsed = parse_domain_xml("web1", domain_xml(body))
        assert parsed.problems == ()
        assert dict(parsed.settings.metadata) == {"min_mib": 1024, "max_mib": 4096, "enabled": False}
        assert parsed.settings.min_guarantee_kib is None


def test_settings_under_the_old_namespace_are_read_and_named():
    """0.3's placeholder namespace is still read (its settings apply, the guest stays managed), with a note on how to
    move them; a domain that has both is read from the current one."""
    (old,) = OLD_NAMESPACES
    body = "<memcoord:min_mib>1024</memcoord:min_mib><max_mib>4096</max_mib>"
    parsed = parse_domain_xml("web1", domain_xml(settings_xml(body).replace(NAMESPACE, old)))
    assert dict(parsed.settings.metadata) == {"min_mib": 1024, "max_mib": 4096}
    assert not parsed.settings.metadata_invalid
    (note,) = parsed.problems
    assert "web1" in note and old in note and f"virsh metadata web1 {NAMESPACE} --key memcoord" in note, note
    both = settings_xml("<min_mib>2048</min_mib>") + settings_xml(body).replace(NAMESPACE, old)
    parsed = parse_domain_xml("web1", domain_xml(both))
    assert dict(parsed.settings.metadata) == {"min_mib": 2048} and parsed.problems == ()


def test_the_namespace_is_a_uri_no_one_else_owns():
    assert re.fullmatch(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", NAMESPACE)
    assert NAMESPACE not in OLD_NAMESPACES


def test_no_metadata_and_another_programs_metadata_set_nothing():
    parsed = parse_domain_xml("web1", domain_xml())
    assert parsed == Parsed(DomainSettings(), ())
    assert dict(parsed.settings.metadata) == {}


@pytest.mark.parametrize(
    ("devices", "deflates"),
    [
        ("<devices><memballoon model='virtio' autodeflate='on'><stats period='1'/></memballoon></devices>", True),
        ("<devices><memballoon model='virtio' autodeflate='off'/></devices>", False),
        ("<devices><memballoon model='virtio'><stats period='1'/></memballoon></devices>", False),
    ],
)
def test_a_balloon_that_deflates_on_oom_is_recognised(devices: str, deflates: bool):
    parsed = parse_domain_xml("web1", domain_xml(devices=devices))
    assert parsed.problems == ()
    assert parsed.settings.deflate_on_oom is deflates


@pytest.mark.parametrize(
    ("memory_backing", "devices", "kind"),
    [
        ("", BALLOON, None),
        ("", "<devices/>", Unballoonable.NO_BALLOON),
        ("", "<devices><memballoon model='none'/></devices>", Unballoonable.NO_BALLOON),
        (
            "",
            "<devices><memballoon model='virtio'/><hostdev mode='subsystem' type='pci' managed='yes'><source>"
            "<address domain='0x0000' bus='0x03' slot='0x00' function='0x0'/></source></hostdev></devices>",
            Unballoonable.HOSTDEV,
        ),
        (
            "",
            "<devices><memballoon model='virtio'/><interface type='hostdev' managed='yes'/></devices>",
            Unballoonable.HOSTDEV,
        ),
        (
            "",
            "<devices><memballoon model='virtio'/><hostdev mode='subsystem' type='usb'><source>"
            "<vendor id='0x1234'/><product id='0xbeef'/></source></hostdev></devices>",
            None,  # USB passthrough pins no guest memory
        ),
        ("<memoryBacking><hugepages/></memoryBacking>", BALLOON, Unballoonable.HUGEPAGES),
        ("<memoryBacking><locked/></memoryBacking>", BALLOON, Unballoonable.LOCKED),
        ("<memoryBacking><source type='memfd'/></memoryBacking>", BALLOON, None),
    ],
)
def test_guests_ballooning_cannot_help_are_recognised_and_never_managed(
    memory_backing: str, devices: str, kind: Unballoonable | None
) -> None:
    settings = parse_domain_xml("web1", domain_xml(memtune=memory_backing, devices=devices)).settings
    assert settings.unballoonable is kind
    config = Config()
    assert config.manages("web1", settings) is (kind is None)
    assert config.exclusion("web1", settings) == (None if kind is None else str(kind))
    # Not even a config file's enabled = true manages it: setMemory would change nothing, or nothing safely.
    forced = parse("[domains.web1]\nenabled = true\n")
    assert forced.manages("web1", settings) is (kind is None)


@pytest.mark.parametrize(
    ("memtune", "kib"),
    [
        ("<memtune><min_guarantee unit='KiB'>307200</min_guarantee></memtune>", 307200),
        ("<memtune><min_guarantee unit='MiB'>300</min_guarantee></memtune>", 307200),
        ("<memtune><min_guarantee>307200</min_guarantee></memtune>", 307200),  # libvirt's default unit
        ("<memtune><hard_limit unit='KiB'>4194304</hard_limit></memtune>", None),
        ("<memtune><min_guarantee unit='KiB'>0</min_guarantee></memtune>", None),  # 0: none
    ],
)
def test_min_guarantee(memtune: str, kib: int | None):
    parsed = parse_domain_xml("web1", domain_xml(memtune=memtune))
    assert parsed.problems == ()
    assert parsed.settings.min_guarantee_kib == kib


@pytest.mark.parametrize(
    ("body", "kept", "needles"),
    [
        (
            "<min_mib>2G</min_mib><max_mib>4096</max_mib>",
            {"max_mib": 4096},
            ("web1", "<memcoord:settings><min_mib>", "'2G'", "not a whole number", "leaves the guest alone"),
        ),
        ("<min_mib>1.5</min_mib>", {}, ("<min_mib>", "'1.5'", "not a whole number")),
        ("<min_mib>-5</min_mib><enabled>true</enabled>", {"enabled": True}, ("'-5'", "greater than 0")),
        ("<enabled>maybe</enabled><min_mib>512</min_mib>", {"min_mib": 512}, ("<enabled>", "'maybe'", "true or false")),
        (
            "<min_mib>2048</min_mib><max_mib>1024</max_mib><enabled>false</enabled>",
            {"enabled": False},
            ("web1", "<min_mib> = '2048'", "<max_mib> = '1024'", "both ignored"),
        ),
        (
            "<min_mbi>512</min_mbi><max_mib>1024</max_mib>",
            {"max_mib": 1024},
            ("<min_mbi>", "'512'", "unknown key", "min_mib, max_mib, enabled"),
        ),
        ("<min_mib>512</min_mib><min_mib>600</min_mib>", {}, ("<min_mib>", "'600'", "given twice")),
        ("<min_mib></min_mib>", {}, ("<min_mib> = ''",)),
    ],
)
def test_bad_metadata_is_named_and_only_the_bad_keys_fall_back(body: str, kept: dict, needles: tuple[str, ...]):
    parsed = parse_domain_xml("web1", domain_xml(settings_xml(body)))
    assert dict(parsed.settings.metadata) == kept
    assert len(parsed.problems) == 1, parsed.problems
    for needle in needles:
        assert needle in parsed.problems[0], (needle, parsed.problems)


@pytest.mark.parametrize(
    "body",
    ["<enable>false</enable>", "<enabled>maybe</enabled>", "<min_mib>2G</min_mib>", "<min_mib>9</min_mib><min_mib>9"],
)
def test_metadata_that_cannot_be_believed_leaves_the_guest_alone(body: str):
    """Fail closed: a misspelt `enable = false` or a floor that does not parse must not leave the guest managed
    with a lower floor than its owner asked for. Only the config file's own `enabled` overrides that."""
    parsed = parse_domain_xml("web1", domain_xml(settings_xml(body)))
    assert parsed.settings.metadata_invalid and parsed.problems
    assert Config().exclusion("web1", parsed.settings) == "bad-metadata"
    assert not Config().manages("web1", parsed.settings)
    told = Config.model_validate({"domains": {"web1": {"enabled": True}}})
    assert told.manages("web1", parsed.settings)


def test_guest_min_pct_scales_the_default_floor_with_the_guests_maximum():
    """min_mib = 256 is no floor for a 32 GiB guest: with min_pct = 10 its floor is 3276 MiB (whole MiB), a 1 GiB
    guest keeps min_mib; a VM's own floor below the scaled one is passed over, the config file's is not; a
    metadata ceiling is raised to it."""
    config = parse("[guest]\nmin_pct = 10\n")
    assert config.floor("big", mib_to_kib(32768)) == (mib_to_kib(3276), Source.DEFAULT)
    assert config.floor("small", mib_to_kib(1024)) == (mib_to_kib(256), Source.DEFAULT)
    low_meta = DomainSettings(MappingProxyType({"min_mib": 1024, "max_mib": 2048}))
    assert config.floor("big", mib_to_kib(32768), low_meta) == (mib_to_kib(3276), Source.DEFAULT)
    assert config.ceiling("big", mib_to_kib(32768), low_meta) == (mib_to_kib(3276), Source.METADATA)
    by_file = parse('[guest]\nmin_pct = 10\n[domains."big"]\nmin_mib = 1024\n')
    assert by_file.floor("big", mib_to_kib(32768)) == (mib_to_kib(1024), Source.CONFIG)
    with pytest.raises(ConfigError, match=r"guest\.min_pct"):
        parse("[guest]\nmin_pct = 101\n")


def test_the_vms_own_definition_cannot_take_a_bound_below_the_hosts_floor():
    """Metadata travels with the VM between hosts and templates: a floor or ceiling below guest.min_mib from it
    is not believed; the config file's own may go lower."""
    config = Config()
    tiny = DomainSettings(MappingProxyType({"min_mib": 1, "max_mib": 64}), min_guarantee_kib=64)
    assert config.floor("g", mib_to_kib(4096), tiny) == (mib_to_kib(256), Source.DEFAULT)
    assert config.ceiling("g", mib_to_kib(4096), tiny) == (mib_to_kib(256), Source.METADATA)
    guaranteed = DomainSettings(MappingProxyType({"min_mib": 1}), min_guarantee_kib=mib_to_kib(1024))
    assert config.floor("g", mib_to_kib(4096), guaranteed) == (mib_to_kib(1024), Source.MIN_GUARANTEE)
    by_file = Config.model_validate({"domains": {"g": {"min_mib": 64, "max_mib": 128}}})
    assert by_file.floor("g", mib_to_kib(4096), tiny) == (mib_to_kib(64), Source.CONFIG)
    assert by_file.ceiling("g", mib_to_kib(4096), tiny) == (mib_to_kib(128), Source.CONFIG)


def test_a_min_guarantee_that_is_not_ascii_digits_is_a_problem_not_a_crash():
    memtune = "<memtune><min_guarantee unit='KiB'>\u00b2</min_guarantee></memtune>"
    parsed = parse_domain_xml("web1", domain_xml(memtune=memtune))
    assert parsed.settings.min_guarantee_kib is None and parsed.problems


def test_a_key_in_a_foreign_namespace_and_attributes_are_reported():
    body = '<x:min_mib xmlns:x="https://x.example/">512</x:min_mib><max_mib>900</max_mib>'
    parsed = parse_domain_xml(
        "web1", domain_xml(settings_xml(body).replace("<memcoord:settings ", "<memcoord:settings min_mib='1' "))
    )
    assert dict(parsed.settings.metadata) == {"max_mib": 900}
    assert any("https://x.example/" in p and "<min_mib>" in p for p in parsed.problems), parsed.problems
    assert any("min_mib='1'" in p and "attributes" in p for p in parsed.problems), parsed.problems


def test_unparseable_xml_is_a_problem_not_a_crash():
    parsed = parse_domain_xml("web1", "<domain><metadata>")
    assert parsed.settings == DomainSettings(metadata_invalid=True)  # its metadata unknown: left alone
    assert len(parsed.problems) == 1 and "web1" in parsed.problems[0]


def test_bad_min_guarantee_is_named():
    parsed = parse_domain_xml(
        "web1", domain_xml(memtune="<memtune><min_guarantee unit='KiB'>lots</min_guarantee></memtune>")
    )
    assert parsed.settings.min_guarantee_kib is None
    assert "web1" in parsed.problems[0] and "min_guarantee" in parsed.problems[0] and "'lots'" in parsed.problems[0]


# -- precedence ------------------------------------------------------------------------------------------
MAX_KIB = mib_to_kib(4096)
MG_KIB = mib_to_kib(700)


@pytest.mark.parametrize(
    ("config_text", "settings", "floor", "ceiling"),
    [
        ("", DomainSettings(), (mib_to_kib(256), Source.DEFAULT), (MAX_KIB, Source.LIBVIRT_MAX)),
        (
            "[guest]\nmin_mib = 300\n",
            DomainSettings(),
            (mib_to_kib(300), Source.DEFAULT),
            (MAX_KIB, Source.LIBVIRT_MAX),
        ),
        ("", DomainSettings(min_guarantee_kib=MG_KIB), (MG_KIB, Source.MIN_GUARANTEE), (MAX_KIB, Source.LIBVIRT_MAX)),
        (
            "",
            DomainSettings(MappingProxyType({"min_mib": 1024, "max_mib": 2048}), MG_KIB),
            (mib_to_kib(1024), Source.METADATA),
            (mib_to_kib(2048), Source.METADATA),
        ),
        (
            '[domains."web1"]\nmin_mib = 512\n',
            DomainSettings(MappingProxyType({"min_mib": 1024, "max_mib": 2048}), MG_KIB),
            (mib_to_kib(512), Source.CONFIG),
            (mib_to_kib(2048), Source.METADATA),
        ),
        (
            '[domains."web1"]\nmax_mib = 3000\n',
            DomainSettings(MappingProxyType({"max_mib": 2048}), MG_KIB),
            (MG_KIB, Source.MIN_GUARANTEE),
            (mib_to_kib(3000), Source.CONFIG),
        ),
        # A max_mib at or above the libvirt maximum does not bind: the maximum does.
        ("", with_metadata(max_mib=8192), (mib_to_kib(256), Source.DEFAULT), (MAX_KIB, Source.LIBVIRT_MAX)),
        # Another domain's table does not apply.
        (
            '[domains."web2"]\nmin_mib = 512\n',
            with_metadata(min_mib=1024),
            (mib_to_kib(1024), Source.METADATA),
            (MAX_KIB, Source.LIBVIRT_MAX),
        ),
    ],
)
def test_config_beats_metadata_beats_min_guarantee_beats_default(config_text, settings, floor, ceiling):
    config = parse(config_text)
    assert config.floor("web1", MAX_KIB, settings) == floor
    assert config.ceiling("web1", MAX_KIB, settings) == ceiling
    assert config.floor_kib("web1", MAX_KIB, settings) == floor[0]
    assert config.ceiling_kib("web1", MAX_KIB, settings) == ceiling[0]


@pytest.mark.parametrize(
    ("config_text", "settings", "exclusion"),
    [
        ("", DomainSettings(), None),
        ("", with_metadata(enabled=False), "metadata"),
        ("", with_metadata(enabled=True), None),
        ('[domains."web1"]\nenabled = true\n', with_metadata(enabled=False), None),  # the file wins
        ('[domains."web1"]\nenabled = false\n', with_metadata(enabled=True), "config"),
        # A table that sets only min_mib does not decide enabled: the metadata still does.
        ('[domains."web1"]\nmin_mib = 512\n', with_metadata(enabled=False), "metadata"),
        ('[libvirt]\ndomains = ["db*"]\n', with_metadata(enabled=True), "libvirt.domains"),
        ("", None, "unread"),
    ],
)
def test_who_excludes_a_domain(config_text: str, settings: DomainSettings | None, exclusion: str | None):
    config = parse(config_text)
    assert config.exclusion("web1", settings) == exclusion
    assert config.manages("web1", settings) is (exclusion is None)


# -- the policy with settings from the VM ----------------------------------------------------------------
def test_the_policy_honours_metadata_and_min_guarantee_and_leaves_unread_and_disabled_guests_alone():
    wasteful = {"current_mib": 1500, "unused_mib": 1200}  # idle with 1.2 GiB free: reclaimed a step a tick
    guests = [
        dom("meta", **wasteful),
        dom("mg", **wasteful),
        dom("plain", **wasteful),
        dom("off", **wasteful),
        dom("unread", **wasteful),
        dom("over", current_mib=1500, unused_mib=1200, max_mib=2048),
    ]
    settings = {
        "meta": with_metadata(min_mib=1450),
        "mg": DomainSettings(min_guarantee_kib=mib_to_kib(1460)),
        "off": with_metadata(enabled=False),
        "unread": None,
        "over": with_metadata(max_mib=1200),
    }
    guests = [_with(d, settings.get(d.name, DomainSettings())) for d in guests]
    changes = by_name(steady(*guests))
    assert changes["meta"].to_kib == mib_to_kib(1450)  # reclaim stops at the metadata floor
    assert changes["mg"].to_kib == mib_to_kib(1460)  # and at min_guarantee
    assert changes["plain"].to_kib == mib_to_kib(1400)  # a full reclaim step
    assert (changes["over"].action, changes["over"].to_kib) == (Action.CLAMP, mib_to_kib(1400))  # toward 1200
    assert "off" not in changes and "unread" not in changes
    plan, _ = decide(snap(*guests), PolicyState(), Config())
    assert set(plan.classes) == {"meta", "mg", "plain", "over"}


def test_a_config_override_beats_the_metadata_in_the_policy():
    guest = _with(dom("meta", current_mib=1500, unused_mib=1200), with_metadata(min_mib=1450))
    config = parse('[domains."meta"]\nmin_mib = 1000\n')
    assert by_name(steady(guest, config=config))["meta"].to_kib == mib_to_kib(1400)


def _with(d, settings):
    from dataclasses import replace

    return replace(d, settings=settings)


# -- the cache -------------------------------------------------------------------------------------------
def test_the_cache_reads_new_domains_once_then_on_events_and_the_slow_timer():
    cache = SettingsCache(refresh_s=300)
    assert cache.due(["a", "b"], now_s=0) == ["a", "b"]  # never read
    for uuid in ("a", "b"):
        cache.store(uuid, Parsed(DomainSettings()), now_s=0)
    assert cache.due(["a", "b"], now_s=10) == []  # read: no call per tick
    cache.mark_changed("b")  # libvirt's metadata-change event
    assert cache.due(["a", "b"], now_s=10) == ["b"]
    assert cache.due(["a", "b"], now_s=11) == []  # the mark was taken by the read
    cache.store("b", Parsed(DomainSettings()), now_s=11)
    assert cache.due(["a", "b"], now_s=300) == ["a"]  # the slow timer, oldest first
    assert cache.due(["a", "b", "c"], now_s=400) == ["c", "a", "b"]  # a new one before the timer
    cache.retry(["a"])  # taken but not read (the tick ran out of time): next tick, before the timer
    assert cache.due(["a"], now_s=20)[0] == "a"
    cache.mark_all_changed()  # a reconnect: events may have been missed
    assert sorted(cache.due(["a", "b"], now_s=20)) == ["a", "b"]


def test_the_cache_reports_a_problem_once_and_forgets_stopped_domains():
    cache = SettingsCache()
    bad = Parsed(DomainSettings(), ("web1: metadata <memcoord:settings><min_mib> = 'x': ...",))
    assert cache.store("u1", bad, now_s=0) == list(bad.problems)
    assert cache.store("u1", bad, now_s=300) == []  # read again by the timer: not logged again
    assert cache.store("u1", Parsed(DomainSettings()), now_s=400) == []
    assert cache.store("u1", bad, now_s=500) == list(bad.problems)  # broken again after a fix: logged again
    assert cache.get("u1") == DomainSettings()
    assert cache.get("u2") is None
    cache.mark_changed("gone")
    cache.keep_only(["u2"])
    assert cache.get("u1") is None
    assert cache.due(["u1"], now_s=600) == ["u1"]  # a domain started again is read again


# -- unmatched [domains."NAME"] ----------------------------------------------------------------------------
def test_unmatched_overrides_name_the_table_and_suggest():
    config = parse(
        '[domains."web-1"]\nenabled = false\n[domains."db*"]\nmin_mib = 512\n[domains."ok"]\nmin_mib = 512\n'
    )
    warnings = unmatched_overrides(config, {"web1", "ok", "db-main"})
    assert len(warnings) == 2, warnings
    db, web = warnings
    assert '[domains."db*"]' in db and "exact, not globs" in db and "qemu:///system" in db
    assert '[domains."web-1"]' in web and "did you mean 'web1'?" in web
    assert unmatched_overrides(config, {"web-1", "db*", "ok"}) == []


def _sim(*names: str) -> SimulatedHypervisor:
    return SimulatedHypervisor(
        [SimGuest(n, max_kib=mib_to_kib(2048), target_kib=mib_to_kib(1024)) for n in names],
        host_total_kib=mib_to_kib(16384),
    )


def test_warn_unmatched_overrides_waits_for_a_reachable_hypervisor(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, "memcoord")
    sim = _sim("web1")
    config = parse('[domains."web-1"]\nenabled = false\n')
    sim.reachable = False
    assert warn_unmatched_overrides(sim, config) is False
    assert caplog.records == []
    sim.reachable = True
    assert warn_unmatched_overrides(sim, config) is True
    (record,) = caplog.records
    assert '[domains."web-1"]' in record.getMessage() and record.MEMCOORD_EVENT == "unmatched-override"


def test_the_service_warns_at_start_and_after_each_reload_not_every_tick(tmp_path: Path, caplog):
    caplog.set_level(logging.WARNING, "memcoord")
    sim = _sim("web1", "db1")
    path = tmp_path / "memcoord.toml"
    path.write_text('[domains."web-1"]\nenabled = false\n')
    service = Service(path, parse(path.read_text(), path), lambda _uri: sim)

    def warned() -> list[str]:
        return [r.getMessage() for r in caplog.records if getattr(r, "MEMCOORD_EVENT", "") == "unmatched-override"]

    for _ in range(3):
        assert service.tick()
        sim.advance(1.0)
    assert len(warned()) == 1 and '"web-1"' in warned()[0]
    path.write_text('[domains."db-1"]\nmin_mib = 512\n[domains."web1"]\nenabled = false\n')
    service.reload()
    for _ in range(3):
        assert service.tick()
        sim.advance(1.0)
    assert len(warned()) == 2 and '"db-1"' in warned()[1] and "did you mean 'db1'?" in warned()[1]
    path.write_text('[domains."web1"]\nenabled = false\n')
    service.reload()
    assert service.tick()
    assert len(warned()) == 2


# -- what status shows --------------------------------------------------------------------------------
def test_status_shows_where_each_floor_and_ceiling_came_from(tmp_path: Path):
    sim = SimulatedHypervisor(
        [
            SimGuest(
                "a-meta",
                max_kib=mib_to_kib(2048),
                target_kib=mib_to_kib(1024),
                settings=with_metadata(min_mib=600, max_mib=1800),
            ),
            SimGuest(
                "b-mg",
                max_kib=mib_to_kib(2048),
                target_kib=mib_to_kib(1024),
                settings=DomainSettings(min_guarantee_kib=mib_to_kib(700)),
            ),
            SimGuest(
                "c-conf", max_kib=mib_to_kib(2048), target_kib=mib_to_kib(1024), settings=with_metadata(min_mib=600)
            ),
            SimGuest(
                "d-off", max_kib=mib_to_kib(2048), target_kib=mib_to_kib(1024), settings=with_metadata(enabled=False)
            ),
            SimGuest("e-plain", max_kib=mib_to_kib(2048), target_kib=mib_to_kib(1024)),
            SimGuest(
                "f-vfio",
                max_kib=mib_to_kib(2048),
                target_kib=mib_to_kib(1024),
                settings=DomainSettings(unballoonable=Unballoonable.HOSTDEV),
            ),
        ],
        host_total_kib=mib_to_kib(16384),
    )
    path = tmp_path / "memcoord.toml"
    path.write_text(f'[status]\npath = "{tmp_path / "state.json"}"\n[domains."c-conf"]\nmin_mib = 800\n')
    service = Service(path, parse(path.read_text(), path), lambda _uri: sim, observer=Observer())
    assert service.tick()
    view = json.loads((tmp_path / "state.json").read_text())
    got = {
        d["name"]: (d["floor_kib"], d["floor_source"], d["ceiling_kib"], d["ceiling_source"], d["excluded_by"])
        for d in view["domains"]
    }
    assert got == {
        "a-meta": (mib_to_kib(600), "metadata", mib_to_kib(1800), "metadata", None),
        "b-mg": (mib_to_kib(700), "min_guarantee", mib_to_kib(2048), "libvirt_max", None),
        "c-conf": (mib_to_kib(800), "config", mib_to_kib(2048), "libvirt_max", None),
        "d-off": (None, None, None, None, "metadata"),
        "e-plain": (mib_to_kib(256), "default", mib_to_kib(2048), "libvirt_max", None),
        "f-vfio": (None, None, None, None, "hostdev"),
    }
    assert {d["name"]: d["metadata"] for d in view["domains"]}["a-meta"] == {"min_mib": 600, "max_mib": 1800}
    lines = status.render(view)
    header = next(line for line in lines if line.startswith("DOMAIN"))
    assert "FLOOR FROM" in header and "CEILING FROM" in header
    row = {line.split()[0]: line for line in lines if line.split() and line.split()[0] in got}
    assert "600 metadata" in row["a-meta"] and "1800 metadata" in row["a-meta"]
    assert "700 min guarantee" in row["b-mg"] and "2048 libvirt max" in row["b-mg"]
    assert "800 config" in row["c-conf"]
    assert "unmanaged (metadata)" in row["d-off"]
    assert "unmanaged (hostdev)" in row["f-vfio"]
    assert (
        "f-vfio: left alone, ballooning cannot help: a host device is assigned (VFIO): QEMU inhibits its balloon"
        in (lines)
    )
    # Both idle with most of their memory free: the plain one is reclaimed, the VFIO one never touched.
    for _ in range(6):
        sim.advance(1.0)
        assert service.tick()
    assert sim.guests["e-plain"].target_kib < mib_to_kib(1024)
    assert sim.guests["f-vfio"].target_kib == mib_to_kib(1024)
    assert "256 default" in row["e-plain"]


# -- check-config ------------------------------------------------------------------------------------------


# -- the adapter reads each domain's XML once, within its share of a tick -----------------------------------
class _Dom:
    """A running domain as the adapter sees it: name, UUID, and its XML (each read counted)."""

    def __init__(self, i: int, metadata: str = "", read_s: float = 0.0) -> None:
        self.i, self.metadata, self.read_s, self.reads = i, metadata, read_s, 0

    def name(self) -> str:
        return f"vm{self.i}"

    def UUIDString(self) -> str:
        return f"00000000-0000-4000-8000-{self.i:012d}"

    def XMLDesc(self, _flags: int = 0) -> str:
        self.reads += 1
        time.sleep(self.read_s)
        return domain_xml(self.metadata).replace("web1", self.name())


class _Conn:
    def __init__(self, doms: list[_Dom]) -> None:
        self.doms = doms

    def getAllDomainStats(self, *_args: object) -> list[tuple[_Dom, dict[str, int]]]:
        return [(d, {"balloon.current": 1048576, "balloon.maximum": 2097152}) for d in self.doms]

    def isAlive(self) -> int:
        return 1

    def close(self) -> int:
        return 0


def _adapter(doms: list[_Dom]):
    from memcoord.hypervisor.libvirt import LibvirtHypervisor

    hv = LibvirtHypervisor("qemu:///system")
    hv._conn = _Conn(doms)  # type: ignore[assignment]
    return hv


def test_the_adapter_reads_a_domain_once_then_only_when_libvirt_says_it_changed(caplog):
    caplog.set_level(logging.WARNING, "memcoord")
    doms = [_Dom(1, settings_xml("<min_mib>900</min_mib>")), _Dom(2, settings_xml("<min_mib>x</min_mib>"))]
    hv = _adapter(doms)
    first = {d.name: d.settings for d in hv.sample().domains}
    assert dict(first["vm1"].metadata) == {"min_mib": 900} and dict(first["vm2"].metadata) == {}
    for _ in range(5):
        hv.sample()
    assert [d.reads for d in doms] == [1, 1]  # not once per tick
    doms[0].metadata = settings_xml("<min_mib>700</min_mib>")
    hv._settings.mark_changed(doms[0].UUIDString())  # what libvirt's metadata-change event does
    later = {d.name: d.settings for d in hv.sample().domains}
    assert dict(later["vm1"].metadata) == {"min_mib": 700}
    assert [d.reads for d in doms] == [2, 1]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "vm2" in warnings[0] and "'x'" in warnings[0]


def test_domains_past_the_read_budget_are_left_alone_until_read(monkeypatch: pytest.MonkeyPatch):
    from memcoord.hypervisor import libvirt as adapter

    monkeypatch.setattr(adapter, "SETTINGS_READ_BUDGET_S", 0.05)
    doms = [_Dom(i, read_s=0.02) for i in range(1, 11)]
    hv = _adapter(doms)
    first = hv.sample()
    unread = [d.name for d in first.domains if d.settings is None]
    assert 0 < len(unread) < 10, unread  # a few read, the rest wait
    plan, _ = decide(first, PolicyState(), Config())
    assert not set(unread) & set(plan.classes)  # an unread guest is not managed
    for _ in range(10):
        snapshot = hv.sample()
    assert all(d.settings is not None for d in snapshot.domains)
    assert all(d.reads == 1 for d in doms), [d.reads for d in doms]


# -- precedence as a property ------------------------------------------------------------------------------
_sizes_mib = st.one_of(st.none(), st.integers(1, 8192))


@given(
    config_min=_sizes_mib,
    config_max=_sizes_mib,
    meta_min=_sizes_mib,
    meta_max=_sizes_mib,
    min_guarantee_mib=st.one_of(st.none(), st.integers(1, 8192)),
    max_mib=st.integers(256, 8192),
)
def test_each_bound_comes_from_the_first_source_that_sets_it(
    config_min, config_max, meta_min, meta_max, min_guarantee_mib, max_mib
):
    table = {k: v for k, v in (("min_mib", config_min), ("max_mib", config_max)) if v is not None}
    if table.get("min_mib", 0) > table.get("max_mib", 1 << 30):
        table["max_mib"] = table["min_mib"]
    config = Config.model_validate({"domains": {"g": table}} if table else {})
    metadata = {k: v for k, v in (("min_mib", meta_min), ("max_mib", meta_max)) if v is not None}
    settings = DomainSettings(
        MappingProxyType(metadata), None if min_guarantee_mib is None else mib_to_kib(min_guarantee_mib)
    )
    # The VM's own definition (metadata, min_guarantee) never takes a bound below guest.min_mib (256): such a
    # floor is passed over for the next source, such a ceiling is raised to 256. The config file may.
    default_mib = 256
    floors = [
        (table.get("min_mib"), Source.CONFIG),
        (None if "min_mib" in table else metadata.get("min_mib"), Source.METADATA),
        (min_guarantee_mib, Source.MIN_GUARANTEE),
    ]
    mib, source = next(
        ((m, s) for m, s in floors if m is not None and (s is Source.CONFIG or m >= default_mib)),
        (default_mib, Source.DEFAULT),
    )
    assert config.floor("g", mib_to_kib(4096), settings) == (mib_to_kib(mib), source)
    ceilings = [(table.get("max_mib"), Source.CONFIG), (metadata.get("max_mib"), Source.METADATA)]
    mib, source = next(((m, s) for m, s in ceilings if m is not None), (max_mib, Source.LIBVIRT_MAX))
    if source is Source.METADATA:
        mib = max(mib, default_mib)
    if mib >= max_mib:
        mib, source = max_mib, Source.LIBVIRT_MAX
    assert config.ceiling("g", mib_to_kib(max_mib), settings) == (mib_to_kib(mib), source)


_keys = st.sampled_from(["min_mib", "max_mib", "enabled", "min_mbi", "MIN_MIB", "x"])
_texts = st.one_of(st.integers(-10, 10_000).map(str), st.sampled_from(["true", "false", "", "1.5", "2G", "yes"]))


@given(st.lists(st.tuples(_keys, _texts), max_size=6))
def test_any_metadata_parses_to_valid_settings_or_named_problems(pairs: list[tuple[str, str]]):
    from xml.sax.saxutils import escape

    body = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in pairs)
    parsed = parse_domain_xml("web1", domain_xml(settings_xml(body)))
    kept = dict(parsed.settings.metadata)
    # Whatever survived is a valid [domains."NAME"] table, and every key dropped was named in a problem.
    DomainOverride.model_validate(kept)
    for key in {k for k, _ in pairs} - set(kept):
        assert any(f"<{key}>" in p for p in parsed.problems), (key, parsed.problems)
    assert all(p.startswith("web1: ") for p in parsed.problems)
