"""The Docker image, without Docker: the Dockerfile read, and its ENTRYPOINT + CMD run the
way the image runs them.

No Docker engine is needed. The static tests read the Dockerfile (two stages on the same
tagged base, a final stage that gets only the installed tree and installs and compiles
nothing, a numeric non-root USER, a WORKDIR that user owns, the shipped config at the daemon's
default path, the exec-form ENTRYPOINT and CMD); scripts/test also runs hadolint on it. The
root test lays out what the final stage leaves behind under a temporary root (the directories
it makes, owned as it chowns them, the config where its COPY puts it), then runs the same
command as the same UID/GID with no supplementary groups and no capabilities, from the same
WORKDIR, with the image's environment, in a throwaway network namespace; it pulls a cable
there and reads ``link.carrier_lost`` back from the events file the shipped config's relative
path names (before the WORKDIR, that path was ``/var/...``, which the image's user cannot
write, and every file event was lost).

The image's Python is stood in for by a venv under the temporary root, made from a Python of
the same minor version that the UID can execute, holding copies of linkmond and its
dependencies (see :func:`image_python`): the project's own .venv may rest on an interpreter
the UID cannot reach (here pyenv's, under /root, mode 0700), and the checkout may lie where
the UID cannot read it.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from linkmond.config import DEFAULT_PATH
from tests.helpers import ROOT, Daemon, NetNS

DOCKERFILE = ROOT / "Dockerfile"
SHIPPED_CONFIG = ROOT / "config" / "linkmond.toml"
#: both stages' base: Python 3.11 on Debian 12, pinned by tag (a digest may follow)
BASE_IMAGE = "python:3.11-slim-bookworm"
#: the environment BASE_IMAGE sets, less GPG_KEY and its version pins
BASE_ENV = {
    "LANG": "C.UTF-8",
    "PATH": "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
}


# -- the Dockerfile --------------------------------------------------------------------------


@dataclass
class Stage:
    """One ``FROM`` stage: its instructions as (KEYWORD, arguments), continuations joined."""

    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"the final stage has no {keyword}"
        return found[-1]

    def workdir(self) -> str:
        """The directory the command starts in: Docker's default is ``/``."""
        found = self.all("WORKDIR")
        return found[-1] if found else "/"

    def exec_form(self, keyword: str) -> list[str]:
        """ENTRYPOINT/CMD in exec form (a JSON list): no /bin/sh between Docker and the
        daemon, so the daemon is PID 1 and ``docker stop``'s SIGTERM reaches it."""
        args = self.last(keyword)
        value = json.loads(args) if args.startswith("[") else None
        assert isinstance(value, list), f"{keyword} {args}: not in exec form"
        return [str(v) for v in value]

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for args in self.all("ENV"):
            words = shlex.split(args)
            if "=" not in words[0]:  # the legacy ENV KEY value form
                env[words[0]] = args.split(None, 1)[1]
                continue
            for word in words:
                key, _, value = word.partition("=")
                env[key] = value
        return env

    def copies(self) -> list[tuple[list[str], list[str], str]]:
        """Each COPY as (its --options, its sources, its destination)."""
        result = []
        for args in self.all("COPY"):
            words = shlex.split(args)
            options = [w for w in words if w.startswith("--")]
            paths = [w for w in words if not w.startswith("--")]
            result.append((options, paths[:-1], paths[-1]))
        return result

    def run_commands(self) -> list[list[str]]:
        """The simple commands of every RUN (split at ``&&``)."""
        return [shlex.split(part) for args in self.all("RUN") for part in args.split("&&")]

    def made_directories(self) -> list[str]:
        made = [
            a
            for cmd in self.run_commands()
            if cmd[0] == "mkdir"
            for a in cmd[1:]
            if not a.startswith("-")
        ]
        return [*made, *self.all("WORKDIR")]

    def chowned(self) -> dict[str, str]:
        """Path → owner (``uid:gid`` as written) of every ``chown`` in a RUN."""
        owners: dict[str, str] = {}
        for cmd in self.run_commands():
            if cmd[0] == "chown":
                owner, *paths = (a for a in cmd[1:] if not a.startswith("-"))
                owners.update(dict.fromkeys(paths, owner))
        return owners


def parse_dockerfile(path: Path = DOCKERFILE) -> list[Stage]:
    stages: list[Stage] = []
    logical = re.sub(r"\\\n(?:\s*#[^\n]*\n)*", " ", path.read_text())  # line continuations
    for raw in logical.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            stages.append(Stage(args))
        else:
            assert stages, f"{keyword} before FROM"
            stages[-1].instructions.append((keyword, args))
    return stages


@pytest.fixture(scope="module")
def final() -> Stage:
    return parse_dockerfile()[-1]


def home_directory(final: Stage) -> str:
    """The home directory the image's ``useradd`` gives its user (else Docker's ``/``)."""
    useradd = next((cmd for cmd in final.run_commands() if cmd[0] == "useradd"), [])
    return useradd[useradd.index("--home-dir") + 1] if "--home-dir" in useradd else "/"


def user_ids(final: Stage) -> tuple[int, int]:
    user = final.last("USER")
    match = re.fullmatch(r"(\d+):(\d+)", user)
    assert match, f"USER {user}: not numeric UID:GID (runAsNonRoot cannot verify a name)"
    return int(match[1]), int(match[2])


# -- the Dockerfile, read -------------------------------------------------------------------


def test_the_build_has_two_stages_and_the_image_gets_only_the_installed_tree() -> None:
    stages = parse_dockerfile()
    assert len(stages) == 2, [s.base for s in stages]
    assert stages[0].base.endswith(" AS build"), stages[0].base
    # the build stage installs linkmond and its dependencies under /install, laid out as in
    # /usr/local (the venv image_python makes there stands in for it)...
    installs = [cmd for cmd in stages[0].run_commands() if cmd[:2] == ["pip", "install"]]
    assert len(installs) == 1, installs
    assert "--prefix=/install" in installs[0], installs[0]
    assert installs[0][-1] == ".", installs[0]
    # ...and that tree is all the final stage takes from it: no wheels, no source, no cache
    from_build = [c for c in stages[1].copies() if any(o.startswith("--from") for o in c[0])]
    assert from_build == [(["--from=build"], ["/install"], "/usr/local")], from_build


def test_both_stages_are_the_same_python_base_pinned_by_tag() -> None:
    for stage in parse_dockerfile():
        image = stage.base.split()[0]
        # the tag names the Python minor and the Debian release; never `latest` or no tag
        assert re.fullmatch(re.escape(BASE_IMAGE) + r"(@sha256:[0-9a-f]{64})?", image), image
        assert stage.base.split()[1:] in ([], ["AS", "build"]), stage.base


def test_the_final_stage_installs_and_compiles_nothing(final: Stage) -> None:
    # what the image holds beyond the base is what the COPYs put there: no package manager
    # or pip runs in it (nothing to cache), no compiler or build tool is there or installed
    unwanted = {
        *("apt", "apt-get", "aptitude", "dpkg", "pip", "pip3", "python", "python3"),
        *("build-essential", "gcc", "g++", "cc", "c++", "clang", "make", "cmake", "cargo"),
    }
    for cmd in final.run_commands():
        assert not unwanted & set(cmd), cmd
    assert not final.all("ADD"), final.all("ADD")
    # nor does the build stage install system packages: no compiler there either
    build = parse_dockerfile()[0]
    for cmd in build.run_commands():
        assert cmd[0] not in {"apt", "apt-get", "aptitude", "dpkg"}, cmd


def test_pip_keeps_no_cache() -> None:
    commands = [cmd for stage in parse_dockerfile() for cmd in stage.run_commands()]
    pips = [cmd for cmd in commands if cmd[0] in {"pip", "pip3"}]
    assert pips
    for cmd in pips:
        assert "--no-cache-dir" in cmd, cmd


def test_every_hadolint_exception_gives_its_reason() -> None:
    # scripts/test runs hadolint; a rule it reports may be ignored only where it is said why
    for line in DOCKERFILE.read_text().splitlines():
        match = re.search(r"hadolint\s+ignore=\S+(.*)", line)
        if match:
            assert len(match[1].strip(" -:#")) >= 10, f"no reason given: {line}"
    config = ROOT / ".hadolint.yaml"
    if config.exists():
        for line in config.read_text().splitlines():
            if re.match(r"\s*-\s*DL\d+", line):
                assert "#" in line, f"no reason given: {line}"


def test_the_image_runs_as_a_fixed_numeric_non_root_uid_and_gid(final: Stage) -> None:
    uid, gid = user_ids(final)
    assert uid != 0
    assert gid != 0
    # the passwd and group entries (ps, ls -l; Docker's HOME) name the same numbers
    commands = {cmd[0]: cmd for cmd in final.run_commands()}
    for command, option, number in (("useradd", "--uid", uid), ("groupadd", "--gid", gid)):
        words = commands[command]
        assert words[words.index(option) + 1] == str(number), words


def test_the_workdir_is_made_and_owned_by_the_images_user(final: Stage) -> None:
    uid, gid = user_ids(final)
    workdir = final.last("WORKDIR")
    assert workdir.startswith("/"), workdir
    assert workdir in final.made_directories()
    assert final.chowned().get(workdir) == f"{uid}:{gid}", final.chowned()
    # the instructions after it run in it, as the user: WORKDIR before USER keeps it ours
    keywords = [kw for kw, _ in final.instructions]
    assert keywords.index("WORKDIR") < keywords.index("USER")


def test_the_shipped_config_is_copied_to_the_daemons_default_path(final: Stage) -> None:
    source = str(SHIPPED_CONFIG.relative_to(ROOT))
    assert ([], [source], str(DEFAULT_PATH)) in final.copies()


def test_entrypoint_and_cmd_are_linkmond_run_on_the_default_config(final: Stage) -> None:
    entrypoint, cmd = final.exec_form("ENTRYPOINT"), final.exec_form("CMD")
    assert entrypoint == ["linkmond"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint[0] in scripts
    assert cmd == ["run"]  # no -c: `linkmond run` reads DEFAULT_PATH, where the COPY put it
    assert final.env().get("STATE_DIRECTORY") == final.last("WORKDIR")


# -- the image, run -------------------------------------------------------------------------


@dataclass
class ImageRoot:
    """A temporary directory standing in for the image's ``/``."""

    top: Path

    def path(self, inside: str) -> Path:
        return self.top / inside.lstrip("/")

    def map_value(self, value: str) -> str:
        """An environment value with its absolute paths moved under the root."""
        if not value.startswith("/"):
            return value
        return ":".join(str(self.path(p)) for p in value.split(":"))


@pytest.fixture
def image_root() -> Iterator[ImageRoot]:
    top = Path(tempfile.mkdtemp(prefix="linkmond-image-"))
    top.chmod(0o755)  # the image's user must get through it, as through the image's /
    try:
        yield ImageRoot(top)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def as_user(cmd: list[str], uid: int, gid: int) -> subprocess.CompletedProcess[str]:
    """``cmd`` run as ``uid``:``gid`` with no groups and no capabilities (execve included),
    from ``/`` (so that ``python -c`` imports nothing from the current directory)."""
    return subprocess.run(
        cmd,
        cwd="/",
        user=uid,
        group=gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def image_python(root: ImageRoot, uid: int, gid: int) -> Path:
    """The image's ``/usr/local/bin``: a venv at ``<root>/usr/local`` made from a Python of
    this minor version that ``uid`` can execute, holding what the build stage installs for
    it (:func:`install_like_the_image`) and the ``linkmond`` script. Nothing in it refers back
    to this checkout or its .venv, which the UID may not reach."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [
        Path(sys._base_executable),  # what our venv was made from
        *(Path(d) / f"python{version}" for d in ("/usr/local/bin", "/usr/bin")),
    ]
    tried = []
    for base in candidates:
        try:
            probe = as_user([str(base), "-c", "import sys; print(sys.version_info[:2])"], uid, gid)
        except OSError as exc:  # e.g. EACCES: a directory on its path is closed to the uid
            tried.append(f"{base}: {exc.strerror}")
            continue
        if probe.returncode == 0 and probe.stdout.strip() == str(sys.version_info[:2]):
            break
        tried.append(f"{base}: {probe.stdout.strip()} {probe.stderr.strip()[-200:]}")
    else:
        raise AssertionError(f"no Python {version} that UID {uid} can execute: {tried}")
    venv = root.path("/usr/local")
    subprocess.run([str(base), "-m", "venv", "--without-pip", str(venv)], check=True)
    install_like_the_image(venv / "lib" / f"python{version}" / "site-packages")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for name, target in scripts.items():  # what pip writes for [project.scripts]
        module, _, function = target.partition(":")
        script = venv / "bin" / name
        script.write_text(
            f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom {module} import {function}\n"
            f"if __name__ == '__main__':\n    sys.exit({function}())\n"
        )
        script.chmod(0o755)
    check = as_user([str(venv / "bin" / "python"), "-c", "import linkmond.cli"], uid, gid)
    assert check.returncode == 0, f"UID {uid} cannot import linkmond.cli: {check.stderr}"
    return venv / "bin"


def install_like_the_image(site_packages: Path) -> None:
    """What the build stage's ``pip install --prefix=/install .`` leaves in site-packages
    (the final stage copies it to /usr/local): the linkmond package of this tree, and its
    dependencies (pyproject.toml's, then theirs, recursively) copied from our venv file by
    file, as each one's RECORD lists them."""
    shutil.copytree(
        ROOT / "linkmond", site_packages / "linkmond", ignore=shutil.ignore_patterns("__pycache__")
    )
    todo = list(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    done: set[str] = set()
    while todo:
        requirement = Requirement(todo.pop())
        name = canonicalize_name(requirement.name)
        marker = requirement.marker
        if name in done or (marker is not None and not marker.evaluate({"extra": ""})):
            continue
        done.add(name)
        dist = importlib.metadata.distribution(name)
        todo += dist.requires or []
        for file in dist.files or []:
            source = Path(str(dist.locate_file(file)))
            if ".." in file.parts or not source.is_file():  # scripts live outside; stale entries
                continue
            (site_packages / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, site_packages / file)


class ImageDaemon(Daemon):
    """The image's ENTRYPOINT + CMD in ``ns``, read back with the :class:`Daemon` helpers."""

    def __init__(self, ns: NetNS, scratch: Path, command: list[str], events: Path) -> None:
        # scratch (not readable by the UID) receives the daemon's stdout and stderr; the test
        # config the base class writes there is not used: the image's own config runs
        super().__init__(ns, scratch)
        self.events_path = events
        self._command = command

    def command(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns.name, *self._command]


def proc_status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: v.strip() for k, v in (line.split(":", 1) for line in text.splitlines())}


@pytest.mark.netns
def test_the_entrypoint_as_the_images_user_writes_a_pulled_cable_to_the_events_file(
    ns: NetNS, tmp_path: Path, image_root: ImageRoot, final: Stage
) -> None:
    uid, gid = user_ids(final)
    # the final stage's file system: its directories root-owned unless it chowns them, the
    # config where its COPY puts it (root-owned, 0644)
    for directory in final.made_directories():
        root_path = image_root.path(directory)
        root_path.mkdir(parents=True, exist_ok=True)
        root_path.chmod(0o755)
    for inside, owner in final.chowned().items():
        owner_uid, owner_gid = (int(i) for i in owner.split(":"))
        os.chown(image_root.path(inside), owner_uid, owner_gid)
    (_, (source,), dest) = next(c for c in final.copies() if c[2] == str(DEFAULT_PATH))
    config = image_root.path(dest)
    config.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / source, config)
    config.chmod(0o644)

    bin_dir = image_python(image_root, uid, gid)
    workdir = image_root.path(final.workdir())
    env = {
        **BASE_ENV,
        "PATH": f"{bin_dir}:{BASE_ENV['PATH']}",  # `linkmond` is found the way Docker finds it
        "HOME": str(image_root.path(home_directory(final))),  # Docker sets it from passwd
        **{k: image_root.map_value(v) for k, v in final.env().items()},
    }
    # The image's command line, with one difference: `-c <the config's path under the root>`.
    # In the image the daemon reads DEFAULT_PATH (/etc/linkmond/linkmond.toml) without it; the
    # test cannot write /etc, so it names the same file where it put it. Every relative path in
    # the config resolves against the WORKDIR, as in the image.
    image_command = [*final.exec_form("ENTRYPOINT"), *final.exec_form("CMD"), "-c", str(config)]
    command = [
        # setpriv switches UID/GID and drops the groups; it keeps its capabilities up to its
        # own execve, so it execs env, which then execs without any: the daemon's interpreter
        # is really one the UID can reach (with setpriv exec'ing it directly, an unreachable
        # one would still run, then fail to find its libraries)
        *("setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"),
        *("env", "-i", *(f"{k}={v}" for k, v in env.items())),
        # Docker enters the WORKDIR as the user, then execs the command found on PATH
        *("sh", "-c", 'cd "$0" && exec "$@"', str(workdir), *image_command),
    ]
    file_sinks = [
        s for s in tomllib.loads(config.read_text())["sinks"].values() if s["type"] == "file"
    ]
    relative = Path(file_sinks[0]["path"])
    assert not relative.is_absolute(), "the shipped config's events file is meant to be relative"
    daemon = ImageDaemon(ns, tmp_path, command, workdir / relative)
    ns.veth("lm0", "lm0p")  # both ends up: lm0 has carrier when the daemon caches it
    try:
        daemon.start()  # waits for daemon.started in the events file
        assert daemon.proc is not None
        pid = daemon.proc.pid  # ip, setpriv, env and sh all exec: this is the daemon
        status = proc_status(pid)
        assert status["Uid"].split() == [str(uid)] * 4
        assert status["Gid"].split() == [str(gid)] * 4
        assert status["Groups"] == ""
        assert int(status["CapEff"], 16) == 0
        assert os.readlink(f"/proc/{pid}/cwd") == str(workdir)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
        assert cmdline[1:] == [str(bin_dir / "linkmond"), *image_command[1:]]

        ns.ip("link", "set", "lm0p", "down")  # the cable: lm0 stays admin up, loses carrier
        lost = daemon.wait_event(
            lambda e: e["type"] == "link.carrier_lost" and e["subject"] == "lm0",
            what="link.carrier_lost",
        )
        assert (lost["data"]["admin_up"], lost["data"]["carrier"]) == (True, False)
        assert daemon.events_path.stat().st_uid == uid  # written by the image's user

        assert daemon.stop(signal.SIGTERM) == 0  # by PID: our own child
    finally:
        daemon.stop(signal.SIGKILL)
    stderr = daemon.stderr()
    logs = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert not [r for r in logs if r.get("level") in {"error", "critical"}], stderr
    assert not re.search(r"permission|EACCES|not permitted", stderr, re.IGNORECASE), stderr
    stopped: Any = next(r for r in logs if r.get("event") == "stopped")
    assert stopped["undelivered"] == 0, stopped
    assert daemon.events()[-1]["type"] == "daemon.stopping"
