"""The real thing, booted: a debootstrapped Debian under systemd-nspawn runs the shipped unit.

The install story of docs/install.md is carried out for real inside the container (a venv at
/opt/linkmond from wheels built on the host, installed offline; the unit, the system config,
the catalog and the logrotate snippet), then `systemctl enable --now linkmond`. Pulling the
container's cable from the host (`ip link set ve-<machine> down`) must reach the file sink
and the journal once; the daemon runs as a dynamic user without capabilities; reload, the
logrotate snippet, the watchdog and stop work as systemd sees them.

The rootfs is cached in /var/tmp/linkmond-test-rootfs/<hash of suite and packages>/ (about
70 s to build, atomically renamed into place) and copied per run, so the cache stays pristine.
Root only; run alone with `pytest -m nspawn`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import IS_ROOT, ROOT, wait_for

pytestmark = pytest.mark.nspawn

SUITE = "bookworm"
# logrotate is not in the list: it is here so the shipped snippet runs for real
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "iproute2",
    "procps",
    "python3",
    "python3-venv",
    "logrotate",
)
CACHE = Path("/var/tmp/linkmond-test-rootfs")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
INSIDE_ENV = ("PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "SYSTEMD_COLORS=0")
EVENTS = "/var/log/linkmond/events.jsonl"
SYSTEM_CONFIG = ROOT / "config" / "linkmond.system.toml"
NETNS_CONFIG = ROOT / "config" / "linkmond.netns.toml"
NETNS_DROPIN = ROOT / "systemd" / "linkmond-netns.conf"
DROPIN_PATH = "/etc/systemd/system/linkmond.service.d/netns.conf"


# -- the rootfs: debootstrap once, cache, copy per run -----------------------------------------


def apt_mirror() -> str:
    """The Debian mirror this machine's apt uses for the plain suite (not -security/-updates)."""
    entries: list[tuple[str, list[str]]] = []
    sources_d = Path("/etc/apt/sources.list.d")
    for path in sorted(sources_d.glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text(errors="replace")):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or not line.strip() or line[0].isspace():
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split():
                continue
            if fields.get("enabled", "yes").lower() == "no":
                continue
            entries += [(uri, fields.get("suites", "").split()) for uri in fields["uris"].split()]
    for path in [Path("/etc/apt/sources.list"), *sorted(sources_d.glob("*.list"))]:
        if not path.exists():
            continue
        for raw in path.read_text(errors="replace").splitlines():
            parts = re.sub(r"\[[^]]*\]", " ", raw.split("#", 1)[0]).split()  # drop [options]
            if len(parts) >= 3 and parts[0] == "deb":
                entries.append((parts[1], [parts[2]]))
    for uri, suites in entries:
        if SUITE in suites:
            return uri
    for uri, suites in entries:
        if not any(s.endswith(("-security", "/updates")) for s in suites):
            return uri
    return DEFAULT_MIRROR


def cached_rootfs() -> Path:
    """A pristine minimal Debian with systemd and python3, built once per package list."""
    key = hashlib.sha256(json.dumps([SUITE, "minbase", sorted(PACKAGES)]).encode()).hexdigest()
    final = CACHE / key[:16]
    if final.is_dir():  # only ever appears complete: renamed into place after debootstrap
        return final
    CACHE.mkdir(parents=True, exist_ok=True)
    for stale in CACHE.glob(".build-*"):  # left by an interrupted run long ago
        if time.time() - stale.stat().st_mtime > 3 * 3600:
            shutil.rmtree(stale, ignore_errors=True)
    build = Path(tempfile.mkdtemp(prefix=f".build-{key[:16]}-", dir=CACHE))
    try:
        build.chmod(0o755)  # becomes the container's /, which the dynamic user must traverse
        cmd = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            str(build),
            apt_mirror(),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}"
        try:
            build.rename(final)
        except OSError:
            if not final.is_dir():  # another run won the race otherwise
                raise
    finally:
        if build.exists():
            shutil.rmtree(build, ignore_errors=True)
    return final


def start_wheel_build(dest: Path, scratch: Path) -> subprocess.Popen[str]:
    """`pip wheel` of the working tree and its dependencies into ``dest``, in the background.

    Built from a copy of the tree: an in-tree build leaves build/lib behind, and stale files
    there would end up in later wheels.
    """
    top_level_skip = {".git", ".venv", "build", "dist", "var", ".ci", ".cache"}

    def ignore(directory: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n == "__pycache__" or n.endswith((".egg-info", "_cache"))}
        if Path(directory) == ROOT:
            skip |= top_level_skip & set(names)
        return skip

    src = scratch / "src"
    shutil.copytree(ROOT, src, ignore=ignore)
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check"]
    return subprocess.Popen(
        [*pip, "-w", str(dest), str(src)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


# -- the booted container -------------------------------------------------------------------


@dataclass
class Machine:
    """A container booted with systemd-nspawn from ``root``; commands run via nsenter."""

    root: Path
    boot_log: Path
    name: str = ""
    proc: subprocess.Popen[bytes] | None = None
    pid1: int = 0

    def boot(self) -> None:
        self.name = f"lm{uuid.uuid4().hex[:8]}"  # host side of the veth: ve-<name>, ≤ 15 chars
        # --keep-unit: with no systemd on the host there is no bus to register a scope with
        nspawn = ["systemd-nspawn", "-b", "-D", str(self.root), "--network-veth"]
        self.proc = subprocess.Popen(
            [*nspawn, "--register=no", "--keep-unit", "--console=read-only", "-M", self.name],
            stdin=subprocess.DEVNULL,
            stdout=self.boot_log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        self.pid1 = wait_for(self._find_pid1, 30, "the container's systemd (PID 1)")
        private = Path(f"/proc/{self.pid1}/root/run/systemd/private")  # systemctl talks here
        wait_for(private.exists, 30, "systemd's private socket in the container")
        state = self.run("systemctl", "is-system-running", "--wait", check=False, timeout=120)
        assert state.stdout.strip() in {"running", "degraded"}, self.diagnose(state.stdout)

    def _find_pid1(self) -> int | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited: {self.diagnose()}")
        pid = self.proc.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except FileNotFoundError:  # kernel without CONFIG_PROC_CHILDREN: scan for our child
            children = [
                p.name for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(p) == pid
            ]
        for child in children:
            with contextlib.suppress(OSError):
                if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                    return int(child)
        return None

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside the container (every namespace of its PID 1, a clean env)."""
        done = subprocess.run(
            ["nsenter", "-t", str(self.pid1), "-a", "env", "-i", *INSIDE_ENV, *cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
            )
        return done

    def path(self, inside: str) -> Path:
        """The host path of a file inside the container."""
        return self.root / inside.lstrip("/")

    def show(self, *props: str, unit: str = "linkmond.service") -> dict[str, str]:
        """``systemctl show UNIT -p …`` as a dict."""
        out = self.run("systemctl", "show", unit, "-p", ",".join(props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def status(self, pid: int | str) -> dict[str, str]:
        """``/proc/PID/status`` inside, as a dict of stripped values."""
        text = self.run("cat", f"/proc/{pid}/status").stdout
        return {
            key: value.strip()
            for key, _, value in (line.partition(":") for line in text.splitlines())
        }

    def events(self, path: str = EVENTS) -> list[dict[str, Any]]:
        """Every event the daemon wrote to a file sink (read from the host side)."""
        try:
            text = self.path(path).read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.endswith("}")]

    def wait_event(
        self, match: Any, what: str, path: str = EVENTS, timeout: float = 15
    ) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            return next((e for e in self.events(path) if match(e)), None)

        try:
            return wait_for(find, timeout, what)  # type: ignore[no-any-return]
        except AssertionError:
            raise AssertionError(f"{what} not in {path}: {self.diagnose()}") from None

    def journal(self) -> list[dict[str, Any]]:
        """``journalctl -t linkmond -o json`` inside: everything with the identifier."""
        out = self.run("journalctl", "--no-pager", "-t", "linkmond", "-o", "json").stdout
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def barrier(self, path: str = EVENTS) -> str:
        """Add and remove a veth pair inside and wait for both events in the file sink: what
        the kernel announced before is then written. Returns the interface name."""
        name = f"lmb{uuid.uuid4().hex[:6]}"
        self.run("ip", "link", "add", name, "type", "veth", "peer", "name", f"{name}p")
        self.wait_event(
            lambda e: e["type"] == "link.added" and e["subject"] == name, f"barrier {name}", path
        )
        self.run("ip", "link", "del", name)
        self.wait_event(
            lambda e: e["type"] == "link.removed" and e["subject"] == name,
            f"barrier {name} removal",
            path,
        )
        return name

    def diagnose(self, extra: str = "", unit: str = "linkmond.service") -> str:
        """The service's status and journal plus the boot log, for assertion messages."""
        parts = [extra]
        if self.pid1:
            for cmd in (
                ("systemctl", "status", "--no-pager", unit),
                ("journalctl", "--no-pager", "-n", "40", "-u", unit),
                ("systemctl", "--failed", "--no-pager"),
            ):
                with contextlib.suppress(Exception):
                    done = self.run(*cmd, check=False, timeout=20)
                    parts.append(done.stdout + done.stderr)
        with contextlib.suppress(OSError):
            parts.append(self.boot_log.read_text(errors="replace")[-2000:])
        return "\n".join(parts)

    def poweroff(self) -> None:
        """SIGRTMIN+3 to the container's systemd is `poweroff`; kill nspawn if it hangs."""
        if self.proc is None:
            return
        if self.proc.poll() is None and self.pid1:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid1, signal.SIGRTMIN + 3)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _ppid(proc_dir: Path) -> int:
    try:
        return int(proc_dir.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def install(machine: Machine, wheels: str) -> None:
    """docs/install.md, step by step, inside the container."""
    machine.run("python3", "-m", "venv", "/opt/linkmond")
    machine.run(
        "/opt/linkmond/bin/pip",
        "install",
        "-q",
        "--disable-pip-version-check",
        "--no-index",
        "--find-links",
        wheels,
        "linkmond",
        timeout=180,
    )
    copies = {
        ROOT / "systemd" / "linkmond.service": "/etc/systemd/system/linkmond.service",
        ROOT / "systemd" / "linkmond.socket": "/etc/systemd/system/linkmond.socket",
        SYSTEM_CONFIG: "/etc/linkmond/linkmond.toml",
        ROOT / "systemd" / "linkmond.logrotate": "/etc/logrotate.d/linkmond",
        ROOT / "systemd" / "linkmond.catalog": "/usr/lib/systemd/catalog/linkmond.catalog",
        # watching other namespaces (docs/install.md): the template, its socket, its config;
        # the netns.conf drop-in is installed by the test that uses it, and removed again
        ROOT / "systemd" / "linkmond@.service": "/etc/systemd/system/linkmond@.service",
        ROOT / "systemd" / "linkmond@.socket": "/etc/systemd/system/linkmond@.socket",
        NETNS_CONFIG: "/etc/linkmond/linkmond-netns.toml",
    }
    for src, dest in copies.items():
        if src.exists():  # the catalog arrives with the journal sink
            target = machine.path(dest)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
            target.chmod(0o644)
    machine.run("journalctl", "--update-catalog")
    machine.run("systemctl", "daemon-reload")
    done = machine.run("systemctl", "enable", "--now", "linkmond", check=False, timeout=120)
    assert done.returncode == 0, machine.diagnose(done.stdout + done.stderr)


@pytest.fixture(scope="module")
def machine() -> Iterator[Machine]:
    """The container, booted, with linkmond installed and enabled --now; powered off after."""
    if not IS_ROOT:
        pytest.skip("needs root to boot a container (CI runs as root)")
    missing = [t for t in ("debootstrap", "systemd-nspawn", "nsenter") if not shutil.which(t)]
    assert not missing, f"missing {missing}: run scripts/setup test (as root)"
    scratch = Path(tempfile.mkdtemp(prefix="linkmond-nspawn-", dir="/var/tmp"))
    m: Machine | None = None
    pip: subprocess.Popen[str] | None = None
    try:
        pip = start_wheel_build(scratch / "wheels", scratch)  # meanwhile: the rootfs
        rootfs = cached_rootfs()
        python = os.readlink(rootfs / "usr/bin/python3")
        assert python == f"python3.{sys.version_info.minor}", (
            f"the container has {python}, this venv Python 3.{sys.version_info.minor}:"
            " wheels built here would not install there"
        )
        root = scratch / "root"
        subprocess.run(["cp", "-a", "--reflink=auto", str(rootfs), str(root)], check=True)
        out, _ = pip.communicate(timeout=600)
        assert pip.returncode == 0, f"pip wheel failed:\n{out[-3000:]}"
        shutil.copytree(scratch / "wheels", root / "wheels")
        m = Machine(scratch / "root", scratch / "boot.log")
        m.boot()
        install(m, "/wheels")
        yield m
    finally:
        if pip is not None and pip.poll() is None:  # our child: the rootfs step failed
            pip.kill()
            pip.wait()
        if m is not None:
            m.poweroff()
        shutil.rmtree(scratch, ignore_errors=True)


@dataclass
class CablePull:
    carrier_lost: dict[str, Any]  # the event in the file sink
    barrier: str  # the interface added and removed after it


@pytest.fixture(scope="module")
def cable_pulled(machine: Machine) -> CablePull:
    """host0 up with carrier, then its cable pulled from the host, then a barrier."""
    veth = f"ve-{machine.name}"
    machine.run("ip", "link", "set", "host0", "up")
    subprocess.run(["ip", "link", "set", veth, "up"], check=True)
    machine.wait_event(
        lambda e: e["type"] == "link.carrier_up" and e["subject"] == "host0", "host0 carrier up"
    )
    subprocess.run(["ip", "link", "set", veth, "down"], check=True)
    lost = machine.wait_event(
        lambda e: e["type"] == "link.carrier_lost" and e["subject"] == "host0",
        "host0 carrier_lost",
    )
    return CablePull(lost, machine.barrier())


# -- the tests, in the order a user meets them ---------------------------------------------


def test_enable_now_starts_the_unit_ready_enabled_and_reporting_status(machine: Machine) -> None:
    props = machine.show("ActiveState", "SubState", "UnitFileState", "StatusText", "Type")
    assert props["Type"] == "notify"
    assert props["ActiveState"] == "active", machine.diagnose()
    assert props["SubState"] == "running"
    assert props["UnitFileState"] == "enabled"
    assert props["StatusText"], "no STATUS= sent"
    started = machine.wait_event(lambda e: e["type"] == "daemon.started", "daemon.started")
    assert started["netns"] == "default"
    assert started["source"] == f"/linkmond/{machine.run('hostname').stdout.strip()}"


def test_main_process_is_a_dynamic_user_without_any_capability(machine: Machine) -> None:
    props = machine.show("MainPID", "UID")
    uid = int(props["UID"])
    assert 61184 <= uid <= 65519, f"UID {uid} is not in systemd's DynamicUser range"
    status = machine.run("cat", f"/proc/{props['MainPID']}/status").stdout
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    assert fields["Uid"].split() == [str(uid)] * 4
    assert fields["Gid"].split()[0] != "0"
    for cap in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"):
        assert int(fields[cap], 16) == 0, f"{cap}={fields[cap].strip()}"
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"  # a system call filter is in force


def test_pulling_the_cable_writes_one_carrier_lost_for_host0_to_the_file(
    machine: Machine, cable_pulled: CablePull
) -> None:
    lost = cable_pulled.carrier_lost
    data = lost["data"]
    assert (data["ifname"], data["admin_up"], data["carrier"]) == ("host0", True, False)
    assert data["changes"]["carrier"] == [True, False]
    assert lost["netns"] == "default"
    assert data["resync"] is False
    losses = [
        e for e in machine.events() if e["type"] == "link.carrier_lost" and e["subject"] == "host0"
    ]
    assert len(losses) == 1, losses
    # the file belongs to the service: LogsDirectory=, owned by the dynamic user, and created
    # 0640 whatever the umask (linkmond.safefile; UMask=0077 would have made it 0600)
    st = machine.path(EVENTS).stat()
    assert st.st_uid == int(machine.show("UID")["UID"])
    assert stat.S_IMODE(st.st_mode) == 0o640


def test_pulling_the_cable_logs_one_carrier_lost_for_host0_to_the_journal(
    machine: Machine, cable_pulled: CablePull
) -> None:
    def seen_barrier() -> list[dict[str, Any]] | None:
        entries = machine.journal()
        done = any(
            e.get("LINKMOND_TYPE") == "link.removed"
            and e.get("LINKMOND_IFNAME") == cable_pulled.barrier
            for e in entries
        )
        return entries if done else None

    try:
        entries = wait_for(seen_barrier, 20, "the barrier's link.removed in the journal")
    except AssertionError:
        raise AssertionError(
            f"journal sink wrote nothing usable: {machine.journal()[-5:]}\n{machine.diagnose()}"
        ) from None
    losses = [
        e
        for e in entries
        if e.get("LINKMOND_TYPE") == "link.carrier_lost" and e.get("LINKMOND_IFNAME") == "host0"
    ]
    assert len(losses) == 1, losses
    entry = losses[0]
    print("journalctl -t linkmond -o json, the carrier loss:\n" + json.dumps(entry, indent=1))
    lost = cable_pulled.carrier_lost
    assert entry["SYSLOG_IDENTIFIER"] == "linkmond"
    assert entry["PRIORITY"] == "4"
    assert entry["_SYSTEMD_UNIT"] == "linkmond.service"
    assert entry["LINKMOND_EVENT_ID"] == lost["id"]
    assert entry["LINKMOND_SEQ"] == str(lost["seq"])
    assert entry["LINKMOND_IFINDEX"] == str(lost["data"]["ifindex"])
    assert json.loads(entry["LINKMOND_JSON"]) == lost
    assert re.fullmatch(r"[0-9a-f]{32}", entry["MESSAGE_ID"])
    assert "host0" in entry["MESSAGE"]
    # the catalog is installed and explains this MESSAGE_ID (journalctl -x)
    catalog = machine.run("journalctl", "--list-catalog").stdout
    assert entry["MESSAGE_ID"] in catalog, "systemd/linkmond.catalog does not cover carrier_lost"


def test_reload_applies_a_changed_config_and_keeps_the_same_process(machine: Machine) -> None:
    before = machine.show("MainPID", "NRestarts")
    links = "/var/log/linkmond/links.jsonl"
    config = SYSTEM_CONFIG.read_text() + (
        f'\n[sinks.links]\ntype = "file"\npath = "{links}"\nevents = ["link.*"]\n'
    )
    machine.path("/etc/linkmond/linkmond.toml").write_text(config)
    machine.run("systemctl", "reload", "linkmond")
    name = machine.barrier(path=links)  # reaches the sink the reload added
    after = machine.show("ActiveState", "MainPID", "NRestarts")
    assert after["ActiveState"] == "active", machine.diagnose()
    assert (after["MainPID"], after["NRestarts"]) == (before["MainPID"], before["NRestarts"])
    assert all(e["type"].startswith("link.") for e in machine.events(links))
    assert any(e["subject"] == name for e in machine.events())  # the kept sink still writes


def test_logrotate_snippet_rotates_and_the_daemon_reopens_its_file(machine: Machine) -> None:
    done = machine.run("logrotate", "-v", "-f", "/etc/logrotate.d/linkmond", check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    rotated = machine.path(EVENTS + ".1")
    assert rotated.exists(), done.stderr
    name = machine.barrier()  # waits for it in the new events.jsonl, created by the daemon
    assert not any(name in line for line in rotated.read_text().splitlines())
    assert machine.path(EVENTS).stat().st_uid == int(machine.show("UID")["UID"])
    assert machine.show("ActiveState")["ActiveState"] == "active"


def test_watchdog_is_armed_and_fed(machine: Machine) -> None:
    props = machine.show("WatchdogUSec", "WatchdogTimestampMonotonic")
    assert props["WatchdogUSec"] == "30s"
    first = int(props["WatchdogTimestampMonotonic"])
    # pings come every WatchdogSec/2 = 15 s; systemd stamps each one it receives
    wait_for(
        lambda: (
            int(machine.show("WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"]) > first
        ),
        20,
        "a WATCHDOG=1 ping",
    )


#: linkmond.socket's ReceiveBuffer= (the kernel reports twice what it was given)
SOCKET_BUFFER = 64 * 1024 * 1024
STORM_ROUTES = 100_000


#: the rtnetlink groups the system config watches, as ``ss -e`` shows a socket's mask:
#: link, neigh, IPv4/IPv6 addresses, routes and rules, IPv4/IPv6 netconf
DAEMON_GROUPS = "0x018405d5"


def test_the_netlink_socket_is_pid1s_with_a_buffer_no_capability_could_give(
    machine: Machine,
) -> None:
    """The daemon (CapEff 0, see above) reads a socket whose buffer is above rmem_max."""
    rmem_max = int(machine.run("sysctl", "-n", "net.core.rmem_max").stdout)
    assert rmem_max < SOCKET_BUFFER, f"this host's rmem_max ({rmem_max}) proves nothing"
    out = machine.run("ss", "-f", "netlink", "-m", "-e", "-p").stdout
    # (ss 6.1 prints each netlink socket twice here)
    ours = {line for line in out.splitlines() if f"groups={DAEMON_GROUPS}" in line}
    print("ss -f netlink -m -e -p, the daemon's notification socket:\n" + "\n".join(ours))
    assert len(ours) == 1, out
    (line,) = ours
    assert f"rb{2 * SOCKET_BUFFER}," in line  # the kernel shows twice what it was given
    assert "rtnl:systemd/1 " in line  # bound by PID 1, whose port id it carries
    assert machine.run("systemctl", "is-active", "linkmond.socket").stdout.strip() == "active"
    # (the file was rotated by now; the journal sink keeps daemon.* events too)
    started = [e for e in machine.journal() if e.get("LINKMOND_TYPE") == "daemon.started"]
    data = json.loads(started[-1]["LINKMOND_JSON"])["data"]
    assert data["receive_buffer"] == SOCKET_BUFFER  # the daemon's own getsockopt agrees
    log = machine.run("journalctl", "--no-pager", "-u", "linkmond.service", "-o", "cat").stdout
    assert "using the netlink socket systemd passed" in log


def test_a_route_storm_reaches_the_file_once_and_the_journal_is_never_throttled(
    machine: Machine,
) -> None:
    """100k routes in one go: each once in the file, the journal sink's events all in the
    journal with no "Suppressed" line, a cable pulled afterwards in the journal, and the
    unit still reloads."""
    before = len(machine.events())
    machine.run("ip", "link", "add", "lmstorm", "type", "veth", "peer", "name", "lmstormp")
    machine.run("ip", "link", "set", "lmstorm", "up")
    machine.run("ip", "link", "set", "lmstormp", "up")
    batch = machine.path("/root/storm.batch")
    batch.write_text(
        "".join(
            f"route add 2001:db8:{i >> 16:x}:{i & 0xFFFF:x}::/64 dev lmstorm\n"
            for i in range(STORM_ROUTES)
        )
    )
    machine.run("ip", "-batch", "/root/storm.batch", timeout=300)
    events = machine.path(EVENTS)

    def routes_written() -> bool:
        data = events.read_bytes()
        return data.count(b'"type":"route.added"') >= STORM_ROUTES and b"lmstorm" in data

    wait_for(routes_written, 300, f"{STORM_ROUTES} route.added in {EVENTS}")
    machine.barrier()
    storm = [
        e
        for e in machine.events()[before:]
        if e["type"] == "route.added"
        and e["data"].get("ifname") == "lmstorm"
        and e["subject"].startswith("2001:db8:")
    ]
    dsts = [e["subject"] for e in storm]
    assert len(dsts) == STORM_ROUTES, f"{len(dsts)} route.added, {len(set(dsts))} distinct"
    assert len(set(dsts)) == STORM_ROUTES
    print(f"storm: {len(dsts)} route.added, each once, in {EVENTS}")

    # a cable pulled after the storm reaches the journal as link.carrier_lost
    machine.run("ip", "link", "set", "lmstormp", "down")
    lost = machine.wait_event(
        lambda e: e["type"] == "link.carrier_lost" and e["subject"] == "lmstorm",
        "lmstorm carrier_lost",
    )

    def in_journal() -> list[dict[str, Any]] | None:
        entries = machine.journal()
        ids = {e.get("LINKMOND_EVENT_ID") for e in entries}
        return entries if lost["id"] in ids else None

    entries = wait_for(in_journal, 30, "lmstorm's carrier_lost in the journal")
    # every event the journal sink takes (links, addresses, rules, netconf, daemon) is there
    journal_ids = {e.get("LINKMOND_EVENT_ID") for e in entries}
    wanted = ("link.", "addr.", "rule.", "netconf.", "daemon.")
    taken = [e for e in machine.events() if e["type"].startswith(wanted)]
    missing = [e["id"] for e in taken if e["id"] not in journal_ids]
    assert not missing, f"{len(missing)} of {len(taken)} journal-bound events not in the journal"
    assert not any(e.get("LINKMOND_TYPE", "").startswith("route.") for e in entries)
    everything = machine.run("journalctl", "--no-pager", "-o", "cat").stdout
    suppressed = [line for line in everything.splitlines() if "Suppressed" in line]
    assert not [line for line in suppressed if "linkmond" in line], suppressed

    # and the unit still reloads in place after it
    pid = machine.show("MainPID")["MainPID"]
    machine.run("systemctl", "reload", "linkmond")
    machine.barrier()
    after = machine.show("ActiveState", "MainPID")
    assert (after["ActiveState"], after["MainPID"]) == ("active", pid), machine.diagnose()


def test_a_cable_pulled_while_the_service_was_stopped_is_reported_at_its_start(
    machine: Machine,
) -> None:
    """Changes missed while stopped, under the real unit (DynamicUser, ProcSubset=pid, the
    boot ID from %b): the state saved at stop is reconciled at the next start."""
    machine.run("ip", "link", "add", "lmrec", "type", "veth", "peer", "name", "lmrecp")
    machine.run("ip", "link", "set", "lmrec", "up")
    machine.run("ip", "link", "set", "lmrecp", "up")
    machine.wait_event(
        lambda e: e["type"] == "link.carrier_up" and e["subject"] == "lmrec", "lmrec carrier up"
    )
    machine.run("systemctl", "stop", "linkmond", timeout=60)
    machine.run("ip", "link", "set", "lmrecp", "down")  # nobody is watching
    machine.run("systemctl", "start", "linkmond", timeout=60)
    lost = machine.wait_event(
        lambda e: e["type"] == "link.carrier_lost" and e["subject"] == "lmrec",
        "lmrec carrier_lost reconciled at start",
        timeout=30,
    )
    assert lost["data"]["resync"] is True
    started = [e for e in machine.events() if e["type"] == "daemon.started"]
    assert started[-1]["seq"] < lost["seq"]  # after this run's daemon.started
    assert machine.show("ActiveState")["ActiveState"] == "active", machine.diagnose()


# -- other network namespaces (docs/install.md: "Watching other network namespaces") --------

#: CAP_SYS_ADMIN's bit in /proc/PID/status: what the netns.conf drop-in grants, and only it
SYS_ADMIN = 1 << 21
CAPS = ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb")


@contextlib.contextmanager
def named_namespace(machine: Machine) -> Iterator[str]:
    """``ip netns add`` a namespace of a unique name inside the container; deleted after."""
    name = f"lmns{uuid.uuid4().hex[:6]}"
    machine.run("ip", "netns", "add", name)
    try:
        machine.run("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        machine.run("ip", "netns", "del", name, check=False)
        assert name not in machine.run("ip", "netns", "list").stdout


def add_veth(machine: Machine, netns: str) -> str:
    """A veth pair inside ``netns``, both ends up; returns the name of one end (the other is
    that name + ``p``)."""
    name = f"lmn{uuid.uuid4().hex[:6]}"
    machine.run("ip", "-n", netns, "link", "add", name, "type", "veth", "peer", "name", f"{name}p")
    machine.run("ip", "-n", netns, "link", "set", name, "up")
    machine.run("ip", "-n", netns, "link", "set", f"{name}p", "up")
    return name


def wait_journal(machine: Machine, match: Any, what: str, timeout: float = 20) -> dict[str, Any]:
    """The first ``journalctl -t linkmond`` entry ``match`` accepts, waited for."""

    def find() -> dict[str, Any] | None:
        return next((e for e in machine.journal() if match(e)), None)

    try:
        return wait_for(find, timeout, what)  # type: ignore[no-any-return]
    except AssertionError:
        raise AssertionError(f"{what} not in the journal: {machine.journal()[-5:]}") from None


def test_an_instance_watches_its_namespace_without_any_capability(machine: Machine) -> None:
    """linkmond@NAME: PID 1 starts the daemon inside /run/netns/NAME and creates its socket
    there; a cable pulled in that namespace reaches the journal with netns NAME, from a
    daemon with no capability in a user namespace of its own; the host's daemon sees none
    of it; the instance keeps its state in a directory of its own."""
    with named_namespace(machine) as ns:
        unit = f"linkmond@{ns}.service"
        try:
            done = machine.run("systemctl", "start", unit, check=False, timeout=60)
            assert done.returncode == 0, machine.diagnose(done.stdout + done.stderr, unit)
            props = machine.show("ActiveState", "MainPID", "UID", unit=unit)
            assert props["ActiveState"] == "active", machine.diagnose(unit=unit)
            pid = props["MainPID"]
            assert machine.run("ip", "netns", "identify", pid).stdout.strip() == ns
            status = machine.status(pid)
            assert status["Uid"].split() == [props["UID"]] * 4
            for cap in CAPS:
                assert int(status[cap], 16) == 0, f"{cap}={status[cap]}"
            assert (status["NoNewPrivs"], status["Seccomp"]) == ("1", "2")
            # PrivateUsers=yes works with NetworkNamespacePath=: a user namespace of its own
            user_ns = machine.run("readlink", f"/proc/{pid}/ns/user", "/proc/1/ns/user").stdout
            assert len(set(user_ns.split())) == 2, user_ns
            # the socket PID 1 made inside the namespace (linkmond@.socket), buffer forced
            out = machine.run("ip", "netns", "exec", ns, "ss", "-f", "netlink", "-m", "-e").stdout
            assert f"rb{2 * SOCKET_BUFFER}," in out, out
            log = machine.run("journalctl", "--no-pager", "-u", unit, "-o", "cat").stdout
            assert "using the netlink socket systemd passed" in log, log

            veth = add_veth(machine, ns)
            machine.run("ip", "-n", ns, "address", "add", "192.0.2.1/24", "dev", veth)
            machine.run("ip", "-n", ns, "link", "set", f"{veth}p", "down")  # the cable
            lost = wait_journal(
                machine,
                lambda e: (
                    e.get("LINKMOND_TYPE") == "link.carrier_lost"
                    and e.get("LINKMOND_IFNAME") == veth
                ),
                f"{veth} carrier_lost from {unit}",
            )
            print(f"journalctl -t linkmond, {unit}'s carrier loss:\n" + json.dumps(lost, indent=1))
            assert lost["LINKMOND_NETNS"] == ns
            assert lost["_SYSTEMD_UNIT"] == unit
            assert json.loads(lost["LINKMOND_JSON"])["netns"] == ns
            added = [
                json.loads(e["LINKMOND_JSON"])
                for e in machine.journal()
                if e.get("LINKMOND_TYPE") == "addr.added" and e.get("LINKMOND_IFNAME") == veth
            ]
            # (and maybe its IPv6 link-local, depending on timing)
            ours = [a for a in added if a["data"]["address"] == "192.0.2.1"]
            assert [a["netns"] for a in ours] == [ns], added
            # the host's daemon watches the host's namespace only
            machine.barrier()
            assert not any(e["subject"].startswith(veth) for e in machine.events())
        finally:
            machine.run("systemctl", "stop", unit, check=False, timeout=60)
        props = machine.show("ActiveState", "Result", unit=unit)
        assert props == {"ActiveState": "inactive", "Result": "success"}, machine.diagnose()
        # PartOf=: the socket went with it, and holds the namespace no longer
        socket_state = machine.run("systemctl", "is-active", f"linkmond@{ns}.socket", check=False)
        assert socket_state.stdout.strip() == "inactive"
        # the state saved at stop is in the instance's own directory, not linkmond.service's
        state = machine.path(f"/var/lib/private/linkmond-netns/{ns}")
        assert list(state.glob("state-*.jsonl")), sorted(state.parent.rglob("*"))
        assert not list(machine.path("/var/lib/private/linkmond").glob(f"*{ns}*"))


def test_the_drop_in_lets_the_unit_follow_namespaces_made_after_its_start(
    machine: Machine,
) -> None:
    """linkmond.service with netns.conf and ``[monitor] netns = "all"``: exactly
    CAP_SYS_ADMIN, no private user namespace; a namespace made after the start (and after
    /run/netns was mounted in the unit's mount namespace) is followed, its events carry its
    name. The unit's config and drop-ins are put back as they were after."""
    config_path = "/etc/linkmond/linkmond.toml"
    config_before = machine.path(config_path).read_text()
    was_active = machine.show("ActiveState")["ActiveState"] == "active"
    dropin = machine.path(DROPIN_PATH)
    assert not dropin.exists()
    try:
        dropin.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(NETNS_DROPIN, dropin)
        dropin.chmod(0o644)
        # the system config with its netns line (if it has one) replaced
        config = re.sub(r"^netns\s*=.*\n", "", SYSTEM_CONFIG.read_text(), flags=re.M)
        config = re.sub(r"^\[monitor\]\n", '[monitor]\nnetns = "all"\n', config, flags=re.M)
        assert config.count("netns =") == 1
        assert 'netns = "all"' in config
        machine.path(config_path).write_text(config)
        # the hardest case for the unit's mount namespace: /run/netns, a mount point of its
        # own made by the first `ip netns add`, does not even exist when the daemon starts
        assert not machine.run("ip", "netns", "list").stdout.strip()  # (no test leaves one)
        machine.run("umount", "/run/netns", check=False)  # (not mounted: nothing to do)
        machine.run("rm", "-rf", "/run/netns")
        machine.run("systemctl", "daemon-reload")
        done = machine.run("systemctl", "restart", "linkmond", check=False, timeout=60)
        assert done.returncode == 0, machine.diagnose(done.stdout + done.stderr)
        pid = machine.show("MainPID")["MainPID"]
        status = machine.status(pid)
        for cap in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
            assert int(status[cap], 16) == SYS_ADMIN, f"{cap}={status[cap]}"
        assert (status["NoNewPrivs"], status["Seccomp"]) == ("1", "2")
        user_ns = machine.run("readlink", f"/proc/{pid}/ns/user", "/proc/1/ns/user").stdout
        assert len(set(user_ns.split())) == 1, user_ns  # PrivateUsers=no

        with named_namespace(machine) as ns:  # made after the start, /run/netns with it
            # followed once inotify reports it and the daemon has entered it: until then a
            # veth made there is in the daemon's first dump of it (no event), so make one
            # per try until a link.added from it arrives
            deadline = time.monotonic() + 30
            veth = ""
            while True:
                veth = add_veth(machine, ns)
                try:
                    added = machine.wait_event(
                        lambda e: e["type"] == "link.added" and e["subject"] == veth,  # noqa: B023
                        f"link.added {veth} from namespace {ns}",
                        timeout=2,
                    )
                    break
                except AssertionError:
                    if time.monotonic() > deadline:
                        raise
            assert added["netns"] == ns
            started = [e for e in machine.events() if e["type"] == "daemon.started"]
            assert started[-1]["netns"] == ns  # announced when the daemon took it up
            # followed now: what changes there is reported as it happens, with its name
            machine.run("ip", "-n", ns, "address", "add", "198.51.100.1/24", "dev", veth)
            addr = machine.wait_event(
                lambda e: (
                    e["type"] == "addr.added"
                    and e["subject"] == veth
                    and e["data"]["address"] == "198.51.100.1"  # (not its IPv6 link-local)
                ),
                f"addr.added 198.51.100.1 on {veth} from namespace {ns}",
            )
            assert addr["netns"] == ns
            machine.run("ip", "-n", ns, "link", "set", f"{veth}p", "down")
            lost = machine.wait_event(
                lambda e: e["type"] == "link.carrier_lost" and e["subject"] == veth,
                f"link.carrier_lost {veth} from namespace {ns}",
            )
            assert lost["netns"] == ns
            # and the host's own changes still come as netns "default"
            name = machine.barrier()
            ours = [e for e in machine.events() if e["subject"] == name]
            assert {e["netns"] for e in ours} == {"default"}  # (not empty: the barrier is there)
        # `ip netns del`: let go of, and the daemon goes on
        gone = machine.wait_event(
            lambda e: e["type"] == "daemon.stopping" and e["netns"] == ns,
            f"daemon.stopping for namespace {ns} after ip netns del",
        )
        assert gone["data"]["reason"] == "netns removed"
        assert machine.show("ActiveState")["ActiveState"] == "active", machine.diagnose()
        machine.barrier()
    finally:
        dropin.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            dropin.parent.rmdir()
        machine.path(config_path).write_text(config_before)
        machine.run("systemctl", "daemon-reload")
        if was_active:
            machine.run("systemctl", "restart", "linkmond", timeout=60)
    if was_active:  # as before: no capability at all
        status = machine.status(machine.show("MainPID")["MainPID"])
        assert all(int(status[cap], 16) == 0 for cap in CAPS), status


def test_stop_ends_with_result_success_and_daemon_stopping_last(machine: Machine) -> None:
    done = machine.run("systemctl", "stop", "linkmond", check=False, timeout=60)
    assert done.returncode == 0, machine.diagnose(done.stderr)
    props = machine.show("ActiveState", "Result", "ExecMainStatus", "ExecMainCode")
    assert props["ActiveState"] == "inactive"
    assert props["Result"] == "success", machine.diagnose()
    assert props["ExecMainStatus"] == "0"
    assert machine.events()[-1]["type"] == "daemon.stopping"


def test_an_invalid_config_fails_the_start_with_78_and_no_restart_loop(machine: Machine) -> None:
    machine.path("/etc/linkmond/linkmond.toml").write_text('[sinks.x]\ntype = "nonsense"\n')
    done = machine.run("systemctl", "start", "linkmond", check=False, timeout=60)
    assert done.returncode != 0
    props = machine.show("ActiveState", "Result", "ExecMainStatus")
    # RestartPreventExitStatus=78: failed for good, not "activating (auto-restart)"
    assert props == {"ActiveState": "failed", "Result": "exit-code", "ExecMainStatus": "78"}
    log = machine.run("journalctl", "--no-pager", "-u", "linkmond.service", "-n", "20").stdout
    assert "sinks.x.type" in log  # the config error names the key, in the unit's journal
