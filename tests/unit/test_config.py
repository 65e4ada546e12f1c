"""Each kind of bad config gives a message naming the file, the key and the value; check-config exits 0 or 78."""

from __future__ import annotations

import copy
import pickle
import tomllib
from pathlib import Path
from types import MappingProxyType

import pytest

from memcoord.core import config as config_module
from memcoord.core.config import Config, ConfigError, ConfigFileError, dump, load, parse
from memcoord.core.model import NO_SETTINGS, DomainSettings, mib_to_kib
from tests.helpers.repo import REPO

SHIPPED = REPO / "etc" / "memcoord.toml"


def error_of(text: str, path: str = "/etc/memcoord.toml") -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, path)
    return str(info.value)


def test_shipped_file_is_exactly_the_defaults():
    assert load(SHIPPED) == Config()


def test_contract_defaults():
    c = Config()
    assert (c.libvirt.uri, c.loop.interval_s, c.loop.stats_period_s, c.loop.dry_run) == (
        "qemu:///system",
        1.0,
        1,
        False,
    )
    g = c.guest
    assert (g.starving_mib, g.wasteful_mib, g.grow_step_mib, g.reclaim_step_mib, g.min_mib, g.idle_tax_mib) == (
        150,
        350,
        300,
        100,
        256,
        2,
    )
    assert c.host.min_available_mib == 1024


def test_unknown_key_names_file_key_and_value():
    msg = error_of("[guest]\nstarving_mb = 100\n")
    assert msg == "/etc/memcoord.toml: guest.starving_mb = 100: unknown key"


def test_unknown_section():
    assert "hots = {'min_available_mib': 1}: unknown key" in error_of("[hots]\nmin_available_mib = 1\n")


def test_wrong_type_names_key_and_value():
    msg = error_of('[guest]\nstarving_mib = "150"\n')
    assert msg.startswith("/etc/memcoord.toml: guest.starving_mib = '150': ")
    assert "integer" in msg


def test_starving_must_be_below_wasteful():
    msg = error_of("[guest]\nstarving_mib = 400\n")
    assert msg == "/etc/memcoord.toml: guest.starving_mib = 400: must be less than guest.wasteful_mib (350)"
    msg = error_of("[guest]\nwasteful_mib = 100\n")
    assert msg == "/etc/memcoord.toml: guest.wasteful_mib = 100: must be greater than guest.starving_mib (150)"


@pytest.mark.parametrize("key", ["grow_step_mib", "reclaim_step_mib", "min_mib"])
@pytest.mark.parametrize("value", [0, -5])
def test_steps_must_be_positive(key: str, value: int):
    msg = error_of(f"[guest]\n{key} = {value}\n")
    assert f"guest.{key} = {value}: Input should be greater than 0" in msg


def test_interval_must_be_positive():
    assert "loop.interval_s = 0.0: Input should be greater than 0" in error_of("[loop]\ninterval_s = 0.0\n")


def test_domain_override_errors_quote_the_domain_name():
    msg = error_of('[domains."web-1.example"]\nmin_mib = 2048\nmax_mib = 1024\n')
    assert msg == '/etc/memcoord.toml: domains."web-1.example".max_mib = 1024: must be at least min_mib (2048)'


def test_every_error_is_reported_at_once():
    msg = error_of("[guest]\ngrow_step_mib = 0\nbogus = 1\n[loop]\ninterval_s = -1\n")
    assert len(msg.splitlines()) == 3


def test_toml_syntax_error_names_the_line():
    msg = error_of("[guest]\nstarving_mib = = 3\n")
    assert msg.startswith("/etc/memcoord.toml: not valid TOML:")
    assert "line 2" in msg


def test_missing_file_and_directory_are_file_errors(tmp_path: Path):
    with pytest.raises(ConfigFileError, match="no such file"):
        load(tmp_path / "absent.toml")
    with pytest.raises(ConfigFileError, match="is a directory"):
        load(tmp_path)


def test_print_config_round_trips():
    config = parse('[guest]\nstarving_mib = 100\n[domains."a"]\nenabled = false\n')
    assert parse(dump(config)) == config
    assert tomllib.loads(dump(config))["domains"] == {"a": {"enabled": False}}


def test_the_profile_is_one_key_and_its_values_scale_with_the_host():
    """The shipped file with only the profile switched: the comfort target and the peak hold follow (the file
    leaves those keys to the profile), and both scale with the host's memory, as the guard does."""
    production = parse(SHIPPED.read_text().replace('profile = "density"', 'profile = "production"'))
    assert production.host.profile == "production"
    gib = 2**20  # KiB
    small, big = production.for_host(24 * gib), production.for_host(512 * gib)
    assert (small.host.min_available_mib, small.host.target_available_mib, small.guest.peak_hold_s) == (
        1024,
        4915,  # 20 % of 24 GiB
        600,
    )
    assert (big.host.min_available_mib, big.host.target_available_mib) == (10485, 104857)  # 2 % and 20 % of 512 GiB
    # On a small host the comfort target stays a GiB above the guard.
    assert production.for_host(4 * gib).host.target_available_mib == 1024 + 1024
    # The density profile, the default: nothing to resolve on a host where 2 % is below 1024 MiB.
    density = load(SHIPPED)
    assert density.for_host(24 * gib) is density
    assert density.for_host(512 * gib).host.target_available_mib == 0
    assert density.for_host(512 * gib).host.min_available_mib == 10485
    # A key the file sets wins over the profile.
    own = parse('[host]\nprofile = "production"\ntarget_available_mib = 3072\n[guest]\npeak_hold_s = 0\n')
    assert (own.for_host(512 * gib).host.target_available_mib, own.for_host(512 * gib).guest.peak_hold_s) == (3072, 0)
    # The same object for the same host on every tick, so that what it found for each domain lasts.
    assert production.for_host(512 * gib) is big
    assert production.for_host(24 * gib) is small


def test_what_the_config_means_for_a_domain_is_found_once_and_again_when_its_inputs_change():
    """`domain_rules`: exclusion, floor, ceiling and weight, as the single methods give them; kept while the
    domain's maximum, its settings object and the config's values are the same."""
    text = '[guest]\nmin_mib = 512\n[domains."web1"]\nweight = 300\nmax_mib = 3000\n'
    config = parse(text)
    max_kib = mib_to_kib(4096)
    floor_1024 = DomainSettings(MappingProxyType({"min_mib": 1024}))
    rules = config.domain_rules("web1", max_kib, floor_1024)
    assert (rules.exclusion, rules.floor_kib, rules.ceiling_kib, rules.weight) == (
        None,
        mib_to_kib(1024),
        mib_to_kib(3000),
        300,
    )
    assert config.domain_rules("web1", max_kib, floor_1024) is rules
    # A new maximum, new settings (libvirt's metadata changed): found again.
    assert config.domain_rules("web1", mib_to_kib(2048), floor_1024).ceiling_kib == mib_to_kib(2048)
    off = DomainSettings(MappingProxyType({"enabled": False}))
    assert config.domain_rules("web1", max_kib, off).exclusion == "metadata"
    assert config.domain_rules("web2", max_kib, None).exclusion == "unread"
    assert config.domain_rules("web2", max_kib, NO_SETTINGS).floor_kib == mib_to_kib(512)
    # A copy with other values finds its own (pydantic's copy would carry what this one found).
    lower = config.model_copy(update={"guest": config.guest.model_copy(update={"min_mib": 256})})
    assert lower.domain_rules("web2", max_kib, NO_SETTINGS).floor_kib == mib_to_kib(256)
    assert config.model_copy().domain_rules("web2", max_kib, NO_SETTINGS).floor_kib == mib_to_kib(512)
    # What it keeps is no part of the config's value, and does not stop it being copied or pickled.
    assert config == parse(text)
    assert dump(config) == dump(parse(text))
    for copied in (copy.deepcopy(config), config.model_copy(deep=True), pickle.loads(pickle.dumps(config))):
        assert copied == config and copied.domain_rules("web1", max_kib, floor_1024) == rules


def test_a_copy_with_other_values_resolves_its_own_host():
    """`for_host` keeps what it resolved per host size; a copy with other values (here the production profile)
    resolves its own, not the original's."""
    host_kib = 512 * 1024 * 1024
    density = Config()
    assert density.for_host(host_kib).host.target_available_mib == 0  # kept by density now
    production = density.model_copy(update={"host": density.host.model_copy(update={"profile": "production"})})
    assert production.for_host(host_kib).host.target_available_mib == production.target_available_mib(host_kib) > 0


def test_what_the_config_keeps_for_domains_is_bounded(monkeypatch: pytest.MonkeyPatch):
    """A host that starts guests under new names for months does not grow the daemon without bound."""
    monkeypatch.setattr(config_module, "DOMAIN_RULES_KEPT", 3)
    config = Config()
    for i in range(10):
        assert config.domain_rules(f"ci-runner-{i}", mib_to_kib(2048), NO_SETTINGS).exclusion is None
    assert len(config._domain_rules_kept) <= 3


def test_new_keys_defaults_and_bad_values():
    config = Config()
    assert (config.host.profile, config.host.min_available_pct, config.libvirt.exclude) == ("density", 2.0, ())
    assert error_of('[host]\nprofile = "prod"\n') == (
        "/etc/memcoord.toml: host.profile = 'prod': Input should be 'density' or 'production'"
    )
    assert error_of("[host]\nmin_available_pct = 60\n") == (
        "/etc/memcoord.toml: host.min_available_pct = 60: Input should be less than or equal to 50"
    )
    assert error_of('[libvirt]\nexclude = "test-*"\n').startswith("/etc/memcoord.toml: libvirt.exclude = 'test-*': ")


def test_exclusion_patterns_are_globs():
    config = parse('[libvirt]\ndomains = ["web*", "db*"]\nexclude = ["*-scratch", "db[0-9]"]\n')
    assert [config.exclusion(n) for n in ("web1", "web1-scratch", "db1", "dbx", "mail")] == [
        None,
        "libvirt.exclude",
        "libvirt.exclude",
        None,
        "libvirt.domains",
    ]
