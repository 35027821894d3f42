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


# -- other network namespaces: the template (no capability) and the drop-in (CAP_SYS_ADMIN) ---

TEMPLATE = ROOT / "systemd" / "linkmond@.service"
TEMPLATE_SOCKET = ROOT / "systemd" / "linkmond@.socket"
NETNS_DROPIN = ROOT / "systemd" / "linkmond-netns.conf"
NETNS_CONFIG = ROOT / "config" / "linkmond.netns.toml"
NETNS_CONFIG_PATH = "/etc/linkmond/linkmond-netns.toml"
DROPIN_PATH = "/etc/systemd/system/linkmond.service.d/netns.conf"
#: the drop-in's price: CAP_SYS_ADMIN, no user namespace, network namespaces allowed
MAX_EXPOSURE_WITH_DROPIN = 2.0
#: what the template may set differently from linkmond.service, and nothing else
TEMPLATE_ONLY = {"Description", "Requires", "After", "ExecStart", "StateDirectory"}
TEMPLATE_ONLY |= {"NetworkNamespacePath", "LogsDirectory", "Also"}


def stubbed(unit: Path, directory: Path) -> Path:
    """A copy of ``unit`` in ``directory`` whose ExecStart runs an existing stub (see
    test_systemd_analyze_verify_accepts_the_unit)."""
    stub = directory / "linkmond-stub"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    text = unit.read_text()
    assert text.count(INSTALLED_BINARY) == 1
    copy = directory / unit.name
    copy.write_text(text.replace(INSTALLED_BINARY, str(stub)))
    return copy


def with_dropin(directory: Path) -> Path:
    """linkmond.service in ``directory`` with the drop-in beside it as systemd finds one
    (``linkmond.service.d/netns.conf``): verify and security --offline read it there."""
    unit = stubbed(UNIT, directory)
    dropins = directory / "linkmond.service.d"
    dropins.mkdir()
    shutil.copyfile(NETNS_DROPIN, dropins / "netns.conf")
    shutil.copyfile(SOCKET, directory / SOCKET.name)
    return unit


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *args], capture_output=True, text=True, check=False, timeout=60
    )


def exposure(unit: Path, name: str) -> tuple[float, str]:
    """``systemd-analyze security --offline=true`` of ``unit``: the overall exposure of
    ``name`` and the lines that cost something."""
    done = analyze("security", "--offline=true", "--no-pager", str(unit))
    assert done.returncode == 0, done.stderr
    match = re.search(
        rf"Overall exposure level for {re.escape(name)}: (\d+(?:\.\d+)?)", done.stdout
    )
    assert match, done.stdout[-2000:]
    failed = "\n".join(line for line in done.stdout.splitlines() if line.startswith("✗"))
    return float(match.group(1)), failed


@needs_analyze
def test_systemd_analyze_verify_accepts_an_instance_of_the_template(tmp_path: Path) -> None:
    stubbed(TEMPLATE, tmp_path)
    shutil.copyfile(TEMPLATE_SOCKET, tmp_path / TEMPLATE_SOCKET.name)
    # an instance name resolves to the template beside it, %i expanded
    instance = tmp_path / "linkmond@blue.service"
    done = analyze("verify", str(instance), str(tmp_path / "linkmond@blue.socket"))
    assert done.returncode == 0, done.stderr
    assert "linkmond" not in done.stderr + done.stdout, done.stderr


@needs_analyze
def test_systemd_analyze_verify_accepts_the_unit_with_the_netns_drop_in(tmp_path: Path) -> None:
    unit = with_dropin(tmp_path)
    done = analyze("verify", str(unit), str(tmp_path / SOCKET.name))
    assert done.returncode == 0, done.stderr
    # a misspelt key or a bad value in the drop-in is a warning naming it
    assert "netns.conf" not in done.stderr + done.stdout, done.stderr
    assert "linkmond." not in done.stderr + done.stdout, done.stderr


@needs_analyze
def test_systemd_analyze_security_rates_an_instance_like_the_unit() -> None:
    # an instance's path resolves to the template beside it, %i expanded
    score, failed = exposure(TEMPLATE.parent / "linkmond@blue.service", "linkmond@blue.service")
    print(f"linkmond@blue.service: {score}\n{failed}")
    assert score <= MAX_EXPOSURE, f"exposure {score}; what costs:\n{failed}"
    unit_score, _ = exposure(UNIT, "linkmond.service")
    assert score <= unit_score  # the same hardening, no capability either


@needs_analyze
def test_systemd_analyze_security_prices_the_netns_drop_in(tmp_path: Path) -> None:
    score, failed = exposure(with_dropin(tmp_path), "linkmond.service")
    print(f"linkmond.service + netns.conf: {score}\n{failed}")
    assert score <= MAX_EXPOSURE_WITH_DROPIN, f"exposure {score}; what costs:\n{failed}"
    unit_score, _ = exposure(UNIT, "linkmond.service")
    assert score > unit_score  # it was read: the drop-in costs something
    # and exactly what it grants: CAP_SYS_ADMIN, network namespaces, no user namespace
    costs = {line.split()[1] for line in failed.splitlines()}
    assert {"CapabilityBoundingSet=~CAP_SYS_ADMIN", "RestrictNamespaces=~net"} <= costs
    assert "PrivateUsers=" in costs
    assert not any("CAP_NET_ADMIN" in c or "~user" in c or "~mnt" in c for c in costs), costs


def test_the_template_is_the_unit_in_a_namespace_with_its_own_state() -> None:
    unit, template = directives(UNIT), directives(TEMPLATE)
    # the same hardening, line for line, apart from what makes it an instance
    for key in (unit.keys() | template.keys()) - TEMPLATE_ONLY:
        assert template.get(key) == unit.get(key), f"{key}: {template.get(key)} != {unit.get(key)}"
    assert template["NetworkNamespacePath"] == ["/run/netns/%i"]
    assert template["CapabilityBoundingSet"] == [""]
    assert template["AmbientCapabilities"] == [""]
    assert template["PrivateUsers"] == ["yes"]
    assert template["ExecStart"] == [f"{INSTALLED_BINARY} run -c {NETNS_CONFIG_PATH}"]
    # each instance's state and spool apart from the others' and from linkmond.service's
    # (/var/lib/linkmond is that unit's DynamicUser symlink: nothing may be made below it)
    (state,) = template["StateDirectory"]
    assert "%i" in state
    assert not state.startswith(unit["StateDirectory"][0] + "/")
    assert "LogsDirectory" not in template  # the shared config has no file sink
    assert template["WantedBy"] == ["multi-user.target"]


def test_the_template_socket_is_made_in_the_namespace_and_pulled_in_by_the_instance() -> None:
    sock, main_sock = directives(TEMPLATE_SOCKET), directives(SOCKET)
    assert sock["NetworkNamespacePath"] == ["/run/netns/%i"]
    for key in ("ListenNetlink", "ReceiveBuffer", "PassCredentials"):
        assert sock[key] == main_sock[key], key
    assert sock["PartOf"] == ["linkmond@%i.service"]
    # not enabled into sockets.target: at boot it would start before /run/netns/NAME exists
    assert "WantedBy" not in sock
    template = directives(TEMPLATE)
    assert template["Requires"] == ["linkmond@%i.socket"]
    assert template["After"] == ["linkmond@%i.socket"]
    assert "Also" not in template


def test_the_netns_drop_in_grants_only_what_entering_a_namespace_needs() -> None:
    dropin = directives(NETNS_DROPIN)
    # each list reset first (they accumulate), then exactly one value
    assert dropin == {
        "CapabilityBoundingSet": ["", "CAP_SYS_ADMIN"],
        "AmbientCapabilities": ["", "CAP_SYS_ADMIN"],
        "PrivateUsers": ["no"],
        "RestrictNamespaces": ["", "net"],
    }
    assert NETNS_DROPIN.read_text().count("[Service]") == 1
    # every setting says why: a comment right above each group of lines
    lines = [line.strip() for line in NETNS_DROPIN.read_text().splitlines()]
    for i, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            above = lines[i - 1]
            assert above.startswith("#") or above.split("=")[0] == line.split("=")[0], line


@needs_analyze
def test_setns_is_allowed_by_the_units_system_call_filter() -> None:
    # the drop-in leaves SystemCallFilter= alone: setns must be in @system-service, not in
    # the @privileged the unit takes away again
    def group(name: str) -> set[str]:
        """The system calls of a set, the sets it includes (``@process``, …) expanded."""
        out = analyze("syscall-filter", "--no-pager", name).stdout
        calls: set[str] = set()
        for line in out.splitlines():
            entry = line.strip()
            if not line.startswith("    ") or entry.startswith("#"):
                continue
            calls |= group(entry) if entry.startswith("@") else {entry}
        return calls

    assert "setns" in group("@system-service")
    assert "setns" not in group("@privileged")
    assert "setns" not in group("@resources")


def test_netns_config_journals_only_and_keeps_the_system_configs_journal_filter() -> None:
    config = load_config(NETNS_CONFIG)
    system = load_config(SYSTEM_CONFIG)
    # every instance reads this file: nothing in it may belong to one instance
    assert [type(s) for s in config.sinks.values()] == [JournalSinkConfig]
    (journal,) = config.sinks.values()
    (system_journal,) = (s for s in system.sinks.values() if isinstance(s, JournalSinkConfig))
    assert journal == system_journal
    # what the journal sink takes is watched; routes and neighbours (no sink) are not
    events = GlobFilter(journal.events)
    for group in config.monitor.groups:
        assert any(events.match(f"{group}.{kind}") for kind in ("added", "changed")), group
    assert not {"route", "neigh"} & set(config.monitor.groups)
    # its own namespace, the one the unit starts it in: entering others needs a capability
    assert config.monitor.netns == ["default"]
    # $STATE_DIRECTORY wins; the fallback is apart from linkmond.service's too
    assert config.daemon.state_directory != system.daemon.state_directory


def test_the_install_story_installs_the_namespace_files() -> None:
    install = (ROOT / "docs" / "install.md").read_text()
    for where in (
        "/etc/systemd/system/linkmond@.service",
        "/etc/systemd/system/linkmond@.socket",
        NETNS_CONFIG_PATH,
        DROPIN_PATH,
        "systemctl enable --now linkmond@blue",
        'netns = "all"',
    ):
        assert where in install, where
    assert f"config/{NETNS_CONFIG.name}" in install
    assert f"systemd/{NETNS_DROPIN.name}" in install
