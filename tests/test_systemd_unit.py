"""The shipped unit, logrotate snippet and system config, checked by systemd's own tools.

`systemd-analyze verify` must accept the unit and `systemd-analyze security --offline=true`
must rate it at an exposure of 1.5 or less; the directives the install story relies on are
there, and the file paths agree with the install story (README / docs/install.md) and the code.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from linkmond.config import DEFAULT_PATH, FileSinkConfig, JournalSinkConfig, load_config
from linkmond.filters import GlobFilter
from tests.helpers import ROOT

UNIT = ROOT / "systemd" / "linkmond.service"
SOCKET = ROOT / "systemd" / "linkmond.socket"
LOGROTATE = ROOT / "systemd" / "linkmond.logrotate"
SYSTEM_CONFIG = ROOT / "config" / "linkmond.system.toml"
# the install story: docs/install.md, folded into README.md
INSTALL_STORY = (ROOT / "docs" / "install.md", ROOT / "README.md")
INSTALLED_BINARY = "/opt/linkmond/bin/linkmond"
MAX_EXPOSURE = 1.5

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze missing: scripts/setup test installs the systemd package as root",
)


def directives(path: Path) -> dict[str, list[str]]:
    """``Key`` → every value it is given, in order, across sections (comments dropped)."""
    found: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        found.setdefault(key.strip(), []).append(value.strip())
    return found


@needs_analyze
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    # verify insists that ExecStart's binary exists and is executable, and /opt/linkmond only
    # exists after an install; so verify a copy whose ExecStart names a stub at a path that
    # exists, with every other line unchanged (--root= would need a whole OS tree instead).
    stub = tmp_path / "linkmond"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    text = UNIT.read_text()
    assert text.count(INSTALLED_BINARY) == 1
    copy = tmp_path / "linkmond.service"
    copy.write_text(text.replace(INSTALLED_BINARY, str(stub)))
    shutil.copyfile(SOCKET, tmp_path / SOCKET.name)  # the service requires it
    done = subprocess.run(
        ["systemd-analyze", "verify", str(copy), str(tmp_path / SOCKET.name)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # warnings (unknown keys, bad values) do not change the exit status: none may appear
    assert "linkmond." not in done.stderr + done.stdout, done.stderr


@needs_analyze
def test_systemd_analyze_security_rates_the_exposure_at_most_1_5() -> None:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    match = re.search(r"Overall exposure level for linkmond\.service: (\d+(?:\.\d+)?)", done.stdout)
    assert match, done.stdout[-2000:]
    exposure = float(match.group(1))
    failed = "\n".join(line for line in done.stdout.splitlines() if line.startswith("✗"))
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure}; what costs:\n{failed}"


def test_unit_has_the_lifecycle_identity_and_sandbox_directives() -> None:
    unit = directives(UNIT)
    required = {
        "Type": "notify",
        "NotifyAccess": "main",
        "WatchdogSec": "30s",
        "Restart": "on-failure",
        "RestartPreventExitStatus": "78",  # EX_CONFIG: restarting cannot fix a bad config
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "DynamicUser": "yes",
        "StateDirectory": "linkmond",
        "LogsDirectory": "linkmond",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "PrivateUsers": "yes",
        "ProtectProc": "invisible",
        "ProcSubset": "pid",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        "UMask": "0077",
    }
    for key, value in required.items():
        assert unit.get(key) == [value], f"{key}={value} expected, unit has {unit.get(key)}"
    assert unit["RestrictAddressFamilies"] == ["AF_NETLINK AF_UNIX AF_INET AF_INET6"]
    assert "@system-service" in unit["SystemCallFilter"]
    # watching the host's links needs the host's network; webhooks need arbitrary addresses
    assert "PrivateNetwork" not in unit
    assert "IPAddressDeny" not in unit
    assert unit["WantedBy"] == ["multi-user.target"]


def test_exec_start_runs_the_venv_binary_on_the_default_config_path() -> None:
    assert directives(UNIT)["ExecStart"] == [f"{INSTALLED_BINARY} run -c {DEFAULT_PATH}"]
    install = "".join(p.read_text() for p in INSTALL_STORY if p.exists())
    assert "python3 -m venv /opt/linkmond" in install  # where the install story puts it
    assert str(DEFAULT_PATH) in install


def test_system_config_journals_and_files_events_where_the_unit_may_write() -> None:
    config = load_config(SYSTEM_CONFIG)
    kinds = {type(sink) for sink in config.sinks.values()}
    assert kinds == {JournalSinkConfig, FileSinkConfig}  # no console: stdout is the journal
    (journal,) = (s for s in config.sinks.values() if isinstance(s, JournalSinkConfig))
    assert journal.socket == Path("/run/systemd/journal/socket")
    (file_sink,) = (s for s in config.sinks.values() if isinstance(s, FileSinkConfig))
    # ProtectSystem=strict: LogsDirectory=linkmond is the only writable place for it
    assert file_sink.path == Path("/var/log/linkmond/events.jsonl")
    assert config.daemon.state_directory == Path("/var/lib/linkmond")


def test_logrotate_snippet_rotates_the_file_sink_and_signals_only_the_main_process() -> None:
    text = LOGROTATE.read_text()
    assert re.search(r"^/var/log/linkmond/\*\.jsonl \{$", text, re.MULTILINE)
    postrotate = re.search(r"postrotate\n(.*?)\n\s*endscript", text, re.DOTALL)
    assert postrotate, text
    assert "systemctl kill -s HUP --kill-whom=main linkmond.service" in postrotate.group(1)
    assert "copytruncate" not in text  # the daemon reopens: rename + create is enough


def test_the_socket_unit_gives_the_daemon_a_forced_receive_buffer() -> None:
    socket_unit = directives(SOCKET)
    assert socket_unit["ListenNetlink"] == ["route"]  # the daemon joins its groups itself
    (size,) = socket_unit["ReceiveBuffer"]
    assert size.endswith("M")
    assert int(size[:-1]) >= 16  # at least the daemon's own default
    assert socket_unit["PartOf"] == ["linkmond.service"]  # no socket outlives a stop
    service = directives(UNIT)
    assert service["Requires"] == ["linkmond.socket"]
    assert service["After"] == ["linkmond.socket"]
    assert service["Also"] == ["linkmond.socket"]  # `systemctl enable linkmond` is enough


def test_the_journal_never_suppresses_what_the_journal_sink_sends() -> None:
    assert directives(UNIT)["LogRateLimitIntervalSec"] == ["0"]
    config = load_config(SYSTEM_CONFIG)
    (journal,) = (s for s in config.sinks.values() if isinstance(s, JournalSinkConfig))
    # what an operator reads in the journal; routes and neighbours (a full table is a
    # million) go to the file
    wanted = {"link.carrier_lost", "link.admin_down", "addr.added", "rule.added"}
    wanted |= {"netconf.changed", "daemon.started", "daemon.overflow", "daemon.stopping"}
    unwanted = {"route.added", "route.removed", "neigh.added", "neigh.changed"}
    events = GlobFilter(journal.events)
    assert all(events.match(t) for t in wanted)
    assert not any(events.match(t) for t in unwanted)
    (file_sink,) = (s for s in config.sinks.values() if isinstance(s, FileSinkConfig))
    assert all(GlobFilter(file_sink.events).match(t) for t in wanted | unwanted)


def test_the_unit_tells_the_daemon_its_boot_id() -> None:
    # ProcSubset=pid hides /proc/sys/kernel/random/boot_id; the saved state needs it
    assert "LINKMOND_BOOT_ID=%b" in directives(UNIT)["Environment"]
