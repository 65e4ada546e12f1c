"""A Debian container booted with systemd-nspawn: real systemd (252 in Debian 12, 257 in Debian 13) as PID 1, the
host's libvirt socket bound in.

The Debian root is built once per release and package list with debootstrap and cached as a tarball under the
cache dir (MEMCOORD_TEST_CACHE, default /var/cache/memcoord-test; lab/debroot.py); each test unpacks a fresh copy,
so `make install` and the packages always run on a clean system.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

from lab import debroot
from lab.debroot import CACHE

__all__ = ["CACHE", "LIBVIRT_HOST_PACKAGES", "PACKAGES", "Container", "exposure", "repo_files"]

# The Debian roots and their package lists live in lab/debroot.py, shared with `make deb RELEASE=...`.
PACKAGES = debroot.BOOKWORM
LIBVIRT_HOST_PACKAGES = debroot.BOOKWORM_LIBVIRT_HOST
# The environment of an admin's root shell, not the test runner's (no PIP_*, no VIRTUAL_ENV, no pager).
ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
}


def repo_files(repo: Path) -> list[str]:
    """The files a `git clone` of the work tree would have (tracked + new, not ignored)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        check=True,
        capture_output=True,
    ).stdout
    return [f for f in out.decode().split("\0") if f and (repo / f).is_file()]


class Container:
    """One booted container; `run` executes a command inside it (all namespaces of its PID 1)."""

    def __init__(
        self,
        name: str,
        workdir: Path,
        packages: list[str] = PACKAGES,
        bind_host_libvirt: bool = True,
        release: str = "bookworm",
    ) -> None:
        """bind_host_libvirt: see the host's libvirtd through /run/libvirt; False for a root with its own."""
        self.name = name
        self.workdir = workdir
        self.packages = packages
        self.release = release
        self.bind_host_libvirt = bind_host_libvirt
        self.root = workdir / "root"
        self.log_path = workdir / "nspawn.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0

    def prepare(self, repo: Path, dest: str = "/root/memcoord") -> None:
        """Unpack a fresh root and copy the repository into it (as an admin's clone would be)."""
        shutil.rmtree(self.workdir, ignore_errors=True)
        debroot.unpack(self.release, self.packages, self.root)
        target = self.root / dest.lstrip("/")
        with tarfile.open(self.workdir / "repo.tar", "w") as tar:
            for f in repo_files(repo):
                tar.add(repo / f, arcname=f)
        target.mkdir(parents=True)
        subprocess.run(["tar", "-C", str(target), "-xf", str(self.workdir / "repo.tar")], check=True)
        # The host's trust store: where HTTPS goes through an inspecting proxy, pip in the container needs its CA,
        # exactly as pip on the host does. On an ordinary network this is the same Mozilla bundle.
        # (A root without ca-certificates has no pip to feed.)
        if (self.root / "etc/ssl/certs").is_dir():
            shutil.copy("/etc/ssl/certs/ca-certificates.crt", self.root / "etc/ssl/certs/ca-certificates.crt")
        (self.root / "etc/hostname").write_text(self.name + "\n")

    def boot(self, timeout: float = 90, private_network: bool = False) -> None:
        """Boot systemd in the container and wait until `systemctl is-system-running` settles.

        private_network: the container gets only its own loopback (no route anywhere), as on an air-gapped host;
        the host's libvirt socket is still bound in unless bind_host_libvirt is False."""
        env = dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="1")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    "systemd-nspawn",
                    "-D",
                    str(self.root),
                    "-M",
                    self.name,
                    "--boot",
                    "--register=no",
                    "--keep-unit",
                    *(["--bind=/run/libvirt"] if self.bind_host_libvirt else []),
                    "--console=passive",
                    # As PID 1 on a host has it: lets systemd bring up lo in a PrivateNetwork= namespace. Without
                    # it every start of a unit with PrivateNetwork= logs "Failed to configure loopback network".
                    "--capability=CAP_NET_ADMIN",
                    *(["--private-network"] if private_network else []),
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self.leader:
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited {self.proc.returncode}: {self.log_path.read_text()}")
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            if children:
                self.leader = int(children[0])
            elif time.monotonic() > deadline:
                raise TimeoutError("systemd-nspawn started no PID 1")
            else:
                time.sleep(0.2)
        while True:
            state = self.run(["systemctl", "is-system-running"], check=False).stdout.strip()
            if state in ("running", "degraded"):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"container system state {state!r} after {timeout}s")
            time.sleep(0.5)

    def run(
        self, args: list[str], check: bool = True, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container as root, with a clean admin environment; capture its output."""
        assert self.leader, "container not booted"
        r = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "--", "env", "-i", *(f"{k}={v}" for k, v in ENV.items()), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        if check and r.returncode != 0:
            raise AssertionError(
                f"in container: {' '.join(args)} exited {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
            )
        return r

    def sh(self, script: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a shell script inside the container."""
        return self.run(["sh", "-c", script], check=check, timeout=timeout)

    def write(self, path: str, text: str) -> None:
        """Write a file inside the container (through the container's own view of its filesystem)."""
        self.run(["sh", "-c", 'cat > "$1"', "sh", path], input=text)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """`systemctl show -p ...` as a dict."""
        out = self.run(["systemctl", "show", unit, *(f"--property={p}" for p in props)]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def shutdown(self, timeout: float = 60) -> None:
        """Power the container off (SIGTERM to systemd-nspawn halts it cleanly), then kill if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def remove(self) -> None:
        """Delete the container's files (after shutdown)."""
        shutil.rmtree(self.workdir, ignore_errors=True)


def exposure(output: str) -> float:
    """The overall exposure number from `systemd-analyze security UNIT` output."""
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", output)
    if not m:
        raise ValueError(f"no exposure level in: {output[-500:]}")
    return float(m.group(1))
