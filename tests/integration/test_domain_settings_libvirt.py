"""Per-domain settings against the real libvirt, with no guest booted: what the QEMU driver accepts, the XML
libvirt formats for metadata and min_guarantee, and `check-config` asking the real libvirtd for its domains.

Only domains this test defines (named after its pid) are touched, and they are undefined again; none is
started, so the shared QEMU lock is not needed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from memcoord.hypervisor.domain_settings import NAMESPACE, PREFIX, parse_domain_xml
from tests.helpers.cli import memcoord
from tests.helpers.faultkit import URI, require_libvirtd

pytestmark = pytest.mark.real


def _domain_xml(name: str, domain_type: str = "qemu", memtune: str = "") -> str:
    return f"""<domain type='{domain_type}'>
  <name>{name}</name>
  <memory unit='MiB'>512</memory>
  <currentMemory unit='MiB'>256</currentMemory>
  {memtune}
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices><memballoon model='virtio'/></devices>
</domain>"""


MIN_GUARANTEE = "<memtune><min_guarantee unit='MiB'>300</min_guarantee></memtune>"


@contextlib.contextmanager
def _defined(conn: libvirt.virConnect, xml: str) -> Iterator[libvirt.virDomain]:
    dom = conn.defineXML(xml)
    try:
        yield dom
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            dom.undefine()


def test_the_qemu_driver_refuses_min_guarantee_so_metadata_is_the_way_for_qemu_guests() -> None:
    """What README says: libvirt's QEMU driver rejects <min_guarantee> in a definition (and in memtune)."""
    require_libvirtd()
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open(URI)
    name = f"mcdomcfg{os.getpid()}-mg"
    try:
        with pytest.raises(libvirt.libvirtError) as refused:
            conn.defineXML(_domain_xml(name, memtune=MIN_GUARANTEE))
        print(f"\ndefine with min_guarantee: {refused.value.get_error_message()}")
        assert "min_guarantee" in refused.value.get_error_message()
        with _defined(conn, _domain_xml(name)) as dom:
            # The Python binding does not even know the parameter name here; virsh asks the driver.
            tune = subprocess.run(
                ["virsh", "-c", URI, "memtune", name, "--min-guarantee", str(300 * 1024), "--config"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            print(f"virsh memtune --min-guarantee: rc {tune.returncode}: {tune.stderr.strip()}")
            assert tune.returncode != 0 and "min_guarantee" in tune.stderr
            # The metadata is accepted on the same domain, and parsed from the XML libvirt gives back.
            dom.setMetadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                "<settings><min_mib>400</min_mib><enabled>false</enabled></settings>",
                PREFIX,
                NAMESPACE,
                libvirt.VIR_DOMAIN_AFFECT_CONFIG,
            )
            parsed = parse_domain_xml(name, dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            assert parsed.problems == ()
            assert dict(parsed.settings.metadata) == {"min_mib": 400, "enabled": False}
    finally:
        conn.close()


def test_min_guarantee_as_a_driver_that_keeps_it_formats_it() -> None:
    """libvirt's test driver keeps <min_guarantee> (as other drivers and older definitions may): the XML it
    formats (KiB) is read as the floor."""
    conn = libvirt.open("test:///default")
    try:
        with _defined(conn, _domain_xml(f"mcdomcfg{os.getpid()}-mg", "test", MIN_GUARANTEE)) as dom:
            parsed = parse_domain_xml(dom.name(), dom.XMLDesc(0))
    finally:
        conn.close()
    assert parsed.problems == ()
    assert parsed.settings.min_guarantee_kib == 300 * 1024


def test_check_config_knows_running_and_defined_domains_of_the_real_libvirtd(tmp_path: Path) -> None:
    require_libvirtd()
    conn = libvirt.open(URI)
    name = f"mcdomcfg{os.getpid()}-web"
    path = tmp_path / "memcoord.toml"
    path.write_text(
        f'[libvirt]\nuri = "{URI}"\n[domains."{name}"]\nenabled = false\n[domains."{name}1"]\nenabled = false\n'
    )
    try:
        with _defined(conn, _domain_xml(name)):  # defined, not running: its table is not a typo
            proc = memcoord("check-config", str(path))
    finally:
        conn.close()
    print(f"\n{proc.stdout}{proc.stderr}")
    assert proc.returncode == 0
    assert proc.stdout == f"{path}: OK\n"
    (warning,) = proc.stderr.splitlines()
    assert f'[domains."{name}1"]' in warning and f"did you mean {name!r}?" in warning
