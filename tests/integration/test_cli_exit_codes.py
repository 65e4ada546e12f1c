"""The real `memcoord` console script as a subprocess: bad flags and bad files give one clear line and a sysexit.

64 usage (unknown flag, missing command, bad value), 66 cannot read the input (missing, a directory, no
permission, an I/O error), 78 the config is wrong. No traceback in any case.

Unreadable as root: root reads a chmod 000 file (CAP_DAC_OVERRIDE), so that case runs the script under
`setpriv` with CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH dropped from the bounding and inheritable sets, which
gives the real EACCES. /proc/self/mem gives a real EIO on read at offset 0.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.cli import EX_CONFIG, EX_NOINPUT, EX_USAGE, MEMCOORD, assert_clean_failure, memcoord


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "memcoord.toml"
    path.write_text('[libvirt]\nuri = "sim:"\n')
    return path


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((), "required: command"),
        (("--bogus",), "error"),
        (("frobnicate",), "invalid choice: 'frobnicate'"),
        (("run", "--bogus"), "unrecognized arguments: --bogus"),
        (("run", "--interval", "0"), "must be greater than 0"),
        (("run", "--interval", "soon"), "not a number: 'soon'"),
        (("run", "--interval", "nan"), "must be greater than 0"),
        (("check-config", "a.toml", "b.toml"), "unrecognized arguments: b.toml"),
        (("print-config", "--config"), "expected one argument"),
    ],
)
def test_usage_errors_exit_64(args: tuple[str, ...], needle: str) -> None:
    proc = memcoord(*args)
    assert_clean_failure(proc, EX_USAGE, "usage: memcoord", needle)


@pytest.mark.parametrize("command", ["check-config", "print-config --config", "run --config"])
def test_missing_file_exits_66(command: str, tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    proc = memcoord(*command.split(), str(missing))
    assert_clean_failure(proc, EX_NOINPUT, f"{missing}: no such file")


@pytest.mark.parametrize("command", ["check-config", "print-config --config", "run --config"])
def test_directory_instead_of_file_exits_66(command: str, tmp_path: Path) -> None:
    proc = memcoord(*command.split(), str(tmp_path))
    assert_clean_failure(proc, EX_NOINPUT, f"{tmp_path}: is a directory")


def test_unreadable_file_exits_66(good: Path) -> None:
    good.chmod(0o000)
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("root reads a mode 000 file and setpriv (util-linux) is missing to drop CAP_DAC_OVERRIDE")
        caps = "-dac_override,-dac_read_search"
        prefix: tuple[str, ...] = (setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}")
    else:
        prefix = ()
    for command in ("check-config", "print-config --config", "run --config"):
        proc = memcoord(*command.split(), str(good), prefix=prefix)
        assert_clean_failure(proc, EX_NOINPUT, f"{good}: permission denied")


def test_io_error_on_read_exits_66() -> None:
    proc = memcoord("check-config", "/proc/self/mem")
    assert_clean_failure(proc, EX_NOINPUT, "/proc/self/mem: cannot read")


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("[guest\n", ("not valid TOML",)),
        ("[guest]\nmin_mib = -5\n", ("guest.min_mib = -5",)),
        ("[loop]\ninterval_s = 0\n[host]\nmin_available_mib = 'a'\n", ("loop.interval_s", "host.min_available_mib")),
        ("[guest]\nstarving_mib = 400\nwasteful_mib = 300\n", ("guest.starving_mib = 400", "guest.wasteful_mib (300)")),
        ('[domains."web 1"]\nenabled = "no"\n', ('domains."web 1".enabled',)),
        ("[typo]\nx = 1\n", ("typo", "unknown key")),
    ],
)
def test_invalid_config_exits_78_naming_the_key(text: str, needles: tuple[str, ...], tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    for command in ("check-config", "print-config --config", "run --config"):
        proc = memcoord(*command.split(), str(path))
        assert_clean_failure(proc, EX_CONFIG, f"{path}", *needles)


def test_non_utf8_config_exits_78(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[libvirt]\nuri = "caf\xe9"\n')
    assert_clean_failure(memcoord("check-config", str(path)), EX_CONFIG, f"{path}: not UTF-8")


def test_good_config_checks_ok_and_runs(good: Path) -> None:
    proc = memcoord("check-config", str(good))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{good}: OK\n"
    printed = memcoord("print-config", "--config", str(good))
    assert printed.returncode == 0 and 'uri = "sim:"' in printed.stdout
    # The run command on the simulator: starts, ticks, stops cleanly on SIGTERM.
    run = subprocess.Popen(
        [str(MEMCOORD), "run", "--config", str(good), "--interval", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2)
        run.terminate()
        _out, err = run.communicate(timeout=10)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, err
    assert "ready, config loaded" in err and "first tick done" in err and "Traceback" not in err


def test_fifo_without_writer_blocks_like_cat(tmp_path: Path) -> None:
    """Documented, not fixed: a FIFO is read like any file (so `check-config <(...)` works); with no writer the
    read blocks, as `cat` does. A FIFO with a writer is read and checked."""
    fifo = tmp_path / "conf.fifo"
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        [str(MEMCOORD), "check-config", str(fifo)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        with open(fifo, "w") as writer:
            writer.write("[guest]\nmin_mib = 0\n")
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EX_CONFIG and "guest.min_mib = 0" in err, err


# `memcoord run` as the unit starts it, with a given Python prelude: exit 78 is the unit's "do not restart"
# (RestartPreventExitStatus=78), so it must mean an invalid file and nothing else.
RUN_WITH = "import sys{prelude}; from memcoord.cli import main; sys.exit(main(sys.argv[1:]))"
NO_PYDANTIC = "; sys.modules['pydantic'] = None"  # a broken install: importing pydantic fails
NO_CHILD = (  # any attempt to start a process fails, as with a moved or missing interpreter
    "; import subprocess, os"
    "; subprocess.Popen.__init__ = lambda *a, **k: (_ for _ in ()).throw(OSError('no process may start'))"
    "; os.posix_spawn = os.fork = lambda *a, **k: (_ for _ in ()).throw(OSError('no process may start'))"
)
IDLE = '[libvirt]\nuri = "test:///default"\ndomains = ["none-such-*"]\n[status]\npath = "{state}"\n'


@pytest.mark.parametrize(
    ("case", "prelude", "text", "code"),
    [
        ("invalid file", "", "[guest]\nmin_mib = 0\n", EX_CONFIG),
        ("missing file", "", None, EX_NOINPUT),
        ("pydantic broken", NO_PYDANTIC, IDLE, 1),
        ("no process can start", NO_CHILD, IDLE, os.EX_OK),
    ],
)
def test_run_exits_78_for_an_invalid_file_and_for_nothing_else(
    case: str, prelude: str, text: str | None, code: int, tmp_path: Path
) -> None:
    """Validation is in the daemon's own process: nothing but the file's content can make it exit 78. A start
    that fails for another reason exits with another code (systemd restarts it), and a daemon that cannot start
    any process validates and runs all the same."""
    path = tmp_path / "memcoord.toml"
    if text is not None:
        path.write_text(text.format(state=tmp_path / "state.json"))
    proc = subprocess.run(
        [sys.executable, "-c", RUN_WITH.format(prelude=prelude), "run", "--config", str(path), "--exit-when-idle"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == code, (case, proc.returncode, proc.stderr[-2000:])
    if case == "pydantic broken":
        assert "import of pydantic halted" in proc.stderr
    if code == os.EX_OK:
        assert "no running domain to coordinate, exiting" in proc.stderr, proc.stderr[-2000:]
