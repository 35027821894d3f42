"""Configuration (docs/configuration.md): human sizes and durations, strict keys and types
with their key path, paths the daemon's user cannot write, and ``check-config`` turning every
problem into one line on stderr with exit status 78."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import pytest

from linkmond import config as config_mod
from linkmond.config import (
    EX_CONFIG,
    BufferConfig,
    ConfigError,
    ConsoleSinkConfig,
    FileSinkConfig,
    load_config,
    parse_config,
)
from tests.helpers import ROOT, linkmond

CONSOLE = '[sinks.out]\ntype = "console"\n'


def problems(text: str) -> dict[str, str]:
    """The ``{key path: reason}`` of the ConfigError that ``text`` must raise."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "test.toml")
    return dict(info.value.problems)


# -- human sizes and durations ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ('"16MiB"', 16 * 1024**2),
        ('"1KiB"', 1024),
        ('"2MB"', 2_000_000),
        ('"1GiB"', 1024**3),
        ('"512"', 512),
        ("4096", 4096),
    ],
)
def test_receive_buffer_accepts_human_sizes(text: str, size: int) -> None:
    config = parse_config(f"[monitor]\nreceive_buffer = {text}\n{CONSOLE}")
    assert config.monitor.receive_buffer == size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [('"2s"', 2.0), ('"500ms"', 0.5), ('"1m"', 60.0), ('"1.5s"', 1.5), ("3", 3.0)],
)
def test_durations_accept_ms_s_and_minutes(text: str, seconds: float) -> None:
    config = parse_config(
        f"[daemon]\ndrain_timeout = {text}\n\n"
        f'[sinks.out]\ntype = "file"\npath = "/tmp/x.jsonl"\nfsync_interval = {text}\n'
    )
    assert config.daemon.drain_timeout == pytest.approx(seconds)
    sink = config.sinks["out"]
    assert isinstance(sink, FileSinkConfig)
    assert sink.fsync_interval == pytest.approx(seconds)


def test_a_size_that_is_not_a_size_is_rejected_at_its_key() -> None:
    found = problems(f'[monitor]\nreceive_buffer = "16 parsecs"\n{CONSOLE}')
    assert list(found) == ["monitor.receive_buffer"]
    assert "16 parsecs" in found["monitor.receive_buffer"]


@pytest.mark.parametrize("value", ['"soon"', '"-2s"', '"2 fortnights"', "true"])
@pytest.mark.parametrize("key", ["hold_down", "fsync_interval"])
def test_a_bad_duration_is_rejected_at_its_key(key: str, value: str) -> None:
    found = problems(f'[sinks.out]\ntype = "file"\npath = "/tmp/x"\n{key} = {value}\n')
    assert list(found) == [f"sinks.out.{key}"]


# -- unknown keys are errors, with their key path -------------------------------------------------


def test_unknown_top_level_key_is_rejected() -> None:
    found = problems(f"colour = true\n{CONSOLE}")
    assert list(found) == ["colour"]
    assert "unknown key" in found["colour"]


def test_unknown_monitor_key_is_rejected_with_its_path() -> None:
    found = problems(f'[monitor]\ninterfacse = ["eth*"]\n{CONSOLE}')
    assert list(found) == ["monitor.interfacse"]
    assert "unknown key" in found["monitor.interfacse"]


def test_typo_inside_a_sink_names_the_sink_and_the_key() -> None:
    found = problems('[sinks.x]\ntype = "file"\npath = "/tmp/x.jsonl"\npathh = "/tmp/y"\n')
    assert list(found) == ["sinks.x.pathh"]
    assert "unknown key" in found["sinks.x.pathh"]


def test_key_of_another_sink_type_is_unknown_for_this_one() -> None:
    # fsync belongs to file sinks: on a console sink it is a typo, not silently ignored
    found = problems('[sinks.out]\ntype = "console"\nfsync = "always"\n')
    assert list(found) == ["sinks.out.fsync"]


def test_unknown_sink_type_is_rejected_at_the_type_key() -> None:
    found = problems('[sinks.x]\ntype = "smtp"\n')
    assert list(found) == ["sinks.x.type"]
    assert "smtp" in found["sinks.x.type"]
    assert "console" in found["sinks.x.type"]
    assert "file" in found["sinks.x.type"]


def test_sink_without_type_is_rejected_at_the_type_key() -> None:
    found = problems('[sinks.x]\npath = "/tmp/x.jsonl"\n')
    assert list(found) == ["sinks.x.type"]
    assert "missing" in found["sinks.x.type"]


def test_file_sink_without_path_names_sinks_x_path() -> None:
    found = problems('[sinks.x]\ntype = "file"\n')
    assert list(found) == ["sinks.x.path"]
    assert "missing" in found["sinks.x.path"]


def test_bad_enum_value_is_rejected_with_the_allowed_values() -> None:
    found = problems('[sinks.x]\ntype = "file"\npath = "/tmp/x"\nfsync = "sometimes"\n')
    assert list(found) == ["sinks.x.fsync"]
    assert "never" in found["sinks.x.fsync"]
    assert "always" in found["sinks.x.fsync"]


def test_every_problem_of_a_file_is_reported_at_once() -> None:
    text = (
        '[monitor]\nreceive_bufer = "1MiB"\n\n'
        '[sinks.x]\ntype = "file"\npathh = "/tmp/x"\n\n'
        '[sinks.y]\ntype = "smtp"\n'
    )
    found = problems(text)
    assert set(found) == {"monitor.receive_bufer", "sinks.x.pathh", "sinks.x.path", "sinks.y.type"}


# -- buffer: how many events wait for a sink, and what a full buffer does -----------------------

SINK_TABLES = {
    "console": '[sinks.x]\ntype = "console"\n',
    "file": '[sinks.x]\ntype = "file"\npath = "/tmp/x.jsonl"\n',
    "journal": '[sinks.x]\ntype = "journal"\n',
    "webhook": '[sinks.x]\ntype = "webhook"\nurl = "https://h.example/x"\nsecret_env = "S"\n',
}
#: a terminal drops what it cannot show in time; the others are lossless and pause the reader
DEFAULT_WHEN_FULL = {
    "console": "drop_newest",
    "file": "block",
    "journal": "block",
    "webhook": "block",
}


@pytest.mark.parametrize("kind", SINK_TABLES)
def test_buffer_defaults_depend_on_the_sink_type(kind: str) -> None:
    sink = parse_config(SINK_TABLES[kind]).sinks["x"]
    assert sink.buffer == BufferConfig(max_events=10_000, when_full=DEFAULT_WHEN_FULL[kind])


@pytest.mark.parametrize("kind", SINK_TABLES)
def test_a_buffer_table_without_when_full_gets_the_sink_types_default(kind: str) -> None:
    sink = parse_config(SINK_TABLES[kind] + "buffer = { max_events = 64 }\n").sinks["x"]
    assert sink.buffer.max_events == 64
    assert sink.buffer.when_full == DEFAULT_WHEN_FULL[kind]
    # check-config shows the effective value, not a hole
    assert sink.model_dump(mode="json")["buffer"] == {
        "max_events": 64,
        "when_full": DEFAULT_WHEN_FULL[kind],
    }


@pytest.mark.parametrize("when_full", ["block", "drop_newest"])
@pytest.mark.parametrize("kind", SINK_TABLES)
def test_explicit_buffer_values_are_kept(kind: str, when_full: str) -> None:
    text = SINK_TABLES[kind] + f'\n[sinks.x.buffer]\nmax_events = 5\nwhen_full = "{when_full}"\n'
    sink = parse_config(text).sinks["x"]
    assert sink.buffer == BufferConfig(max_events=5, when_full=when_full)  # type: ignore[arg-type]


def test_a_buffer_table_with_only_when_full_keeps_the_default_size() -> None:
    text = SINK_TABLES["file"] + 'buffer = { when_full = "drop_newest" }\n'
    assert parse_config(text).sinks["x"].buffer == BufferConfig(
        max_events=10_000, when_full="drop_newest"
    )


def test_an_unknown_when_full_is_rejected_with_the_allowed_values() -> None:
    found = problems(SINK_TABLES["file"] + 'buffer = { when_full = "drop_oldest" }\n')
    assert list(found) == ["sinks.x.buffer.when_full"]
    assert "block" in found["sinks.x.buffer.when_full"]
    assert "drop_newest" in found["sinks.x.buffer.when_full"]


@pytest.mark.parametrize("value", ["0", "-1"])
def test_a_buffer_that_holds_nothing_is_refused(value: str) -> None:
    found = problems(SINK_TABLES["journal"] + f"buffer = {{ max_events = {value} }}\n")
    assert list(found) == ["sinks.x.buffer.max_events"]
    assert "greater than or equal to 1" in found["sinks.x.buffer.max_events"]


@pytest.mark.parametrize("value", ['"100"', "true", "1.5", "100.0"])
def test_max_events_must_be_an_integer_not_something_like_one(value: str) -> None:
    found = problems(SINK_TABLES["file"] + f"buffer = {{ max_events = {value} }}\n")
    assert list(found) == ["sinks.x.buffer.max_events"]


@pytest.mark.parametrize("value", ["true", "1", '"yes"'])
def test_when_full_must_be_one_of_the_names(value: str) -> None:
    found = problems(SINK_TABLES["file"] + f"buffer = {{ when_full = {value} }}\n")
    assert list(found) == ["sinks.x.buffer.when_full"]


def test_buffer_must_be_a_table() -> None:
    found = problems(SINK_TABLES["file"] + "buffer = 100\n")
    assert list(found) == ["sinks.x.buffer"]


def test_a_typo_inside_buffer_names_its_key_path() -> None:
    found = problems(SINK_TABLES["file"] + "buffer = { max_event = 5 }\n")
    assert list(found) == ["sinks.x.buffer.max_event"]
    assert "unknown key" in found["sinks.x.buffer.max_event"]


@pytest.mark.parametrize("kind", SINK_TABLES)
def test_queue_size_is_refused_naming_what_replaced_it(kind: str) -> None:
    found = problems(SINK_TABLES[kind] + "queue_size = 5000\n")
    assert found == {"sinks.x.queue_size": "replaced by buffer.max_events"}


def test_check_config_with_queue_size_exits_78_naming_buffer_max_events(tmp_path: Path) -> None:
    old = tmp_path / "old.toml"
    old.write_text(SINK_TABLES["file"] + "queue_size = 5000\n")
    result = linkmond("check-config", "-c", str(old))
    assert result.returncode == EX_CONFIG == 78
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"linkmond: configuration error: {old}: sinks.x.queue_size: replaced by buffer.max_events"
    ]


def test_check_config_prints_the_effective_buffer(tmp_path: Path) -> None:
    path = tmp_path / "ok.toml"
    path.write_text(
        SINK_TABLES["console"]
        + "buffer = { max_events = 7 }\n\n"
        + SINK_TABLES["journal"].replace("sinks.x", "sinks.j")
    )
    result = linkmond("check-config", "-c", str(path))
    assert result.returncode == 0, result.stderr
    sinks = json.loads(result.stdout)["sinks"]
    assert sinks["x"]["buffer"] == {"max_events": 7, "when_full": "drop_newest"}
    assert sinks["j"]["buffer"] == {"max_events": 10_000, "when_full": "block"}


# -- whole-file problems ------------------------------------------------------------------------


def test_invalid_toml_is_a_config_error_naming_the_file() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config('[sinks.x\ntype = "console"\n', "broken.toml")
    assert info.value.path == "broken.toml"
    assert "invalid TOML" in str(info.value)
    assert str(info.value).startswith("broken.toml: ")


def test_a_config_without_sinks_is_rejected() -> None:
    found = problems('[monitor]\ninterfaces = ["*"]\n')
    assert list(found) == ["sinks"]


def test_explicitly_named_missing_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert str(info.value) == f"{missing}: no such file"


def test_missing_default_file_means_the_built_in_console_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config_mod, "DEFAULT_PATH", tmp_path / "absent.toml")
    config = load_config(None)
    assert list(config.sinks) == ["console"]
    assert isinstance(config.sinks["console"], ConsoleSinkConfig)


def test_load_config_reads_and_validates_a_file(tmp_path: Path) -> None:
    path = tmp_path / "ok.toml"
    path.write_text(f'[sinks.events]\ntype = "file"\npath = "{tmp_path}/e.jsonl"\n')
    sink = load_config(path).sinks["events"]
    assert isinstance(sink, FileSinkConfig)
    assert sink.path == tmp_path / "e.jsonl"
    assert sink.fsync == "never"


def test_error_message_is_file_then_key_path_then_reason() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config('[sinks.x]\ntype = "file"\n', "/etc/linkmond/linkmond.toml")
    assert str(info.value) == "/etc/linkmond/linkmond.toml: sinks.x.path: required key is missing"


# -- the check-config command ---------------------------------------------------------------------


def test_check_config_of_a_bad_file_prints_one_line_per_problem_and_exits_78(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[monitor]\nreceive_bufer = "1MiB"\n\n'
        '[sinks.x]\ntype = "file"\npathh = "/tmp/x"\n\n'
        '[sinks.y]\ntype = "smtp"\n'
    )
    result = linkmond("check-config", "-c", str(bad))
    assert result.returncode == EX_CONFIG == 78
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    expected = {
        "monitor.receive_bufer": "unknown key",
        "sinks.x.pathh": "unknown key",
        "sinks.x.path": "required key is missing",
        "sinks.y.type": "unknown sink type 'smtp'",
    }
    assert len(lines) == len(expected), result.stderr
    for key, reason in expected.items():
        line = next((ln for ln in lines if f": {key}: " in ln), None)
        assert line is not None, f"no line for {key}: {result.stderr}"
        assert str(bad) in line
        assert reason in line


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[sinks.x\ntype = "console"\n', "invalid TOML"),
        ('[monitor]\ninterfaces = ["*"]\n', "sinks: no sink configured"),
        ('[sinks.x]\ntype = "file"\n', "sinks.x.path: required key is missing"),
        ("sinks = 3\n", "sinks: "),
    ],
)
def test_check_config_rejects_a_bad_file_in_one_line(
    tmp_path: Path, text: str, needle: str
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    result = linkmond("check-config", "-c", str(bad))
    assert result.returncode == 78
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert str(bad) in result.stderr
    assert needle in result.stderr


@pytest.mark.parametrize("make", ["missing", "directory", "not utf-8"])
def test_check_config_of_an_unreadable_file_is_one_line(tmp_path: Path, make: str) -> None:
    path = tmp_path / "linkmond.toml"
    if make == "directory":
        path.mkdir()
    elif make == "not utf-8":
        path.write_bytes(b"\xff\xfe[sinks]\n")
    result = linkmond("check-config", "-c", str(path))
    assert result.returncode == 78
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert str(path) in result.stderr
    if make == "missing":
        assert "no such file" in result.stderr


def test_run_rejects_a_bad_file_before_starting(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[sinks.x]\ntype = "file"\npathh = "/tmp/x"\n')
    result = linkmond("run", "-c", str(bad))
    assert result.returncode == 78
    assert "Traceback" not in result.stderr
    assert f"{bad}: sinks.x.pathh: unknown key" in result.stderr
    assert result.stdout == ""


def test_check_config_of_the_shipped_config_prints_effective_json_with_defaults() -> None:
    result = linkmond("check-config", "-c", str(ROOT / "config" / "linkmond.toml"))
    assert result.returncode == 0, result.stderr
    effective = json.loads(result.stdout)
    assert effective["monitor"]["receive_buffer"] == 16 * 1024**2
    assert effective["monitor"]["groups"] == ["link", "addr", "route", "neigh", "rule", "netconf"]
    assert effective["daemon"]["drain_timeout"] == 5.0
    assert effective["log"] == {"level": "info", "format": "auto"}
    console = effective["sinks"]["console"]
    events = effective["sinks"]["events"]
    # defaults the shipped file does not spell out are filled in
    assert console["type"] == "console"
    assert console["json"] is False
    assert console["stream"] == "stdout"
    assert console["interfaces"] == ["*"]
    assert console["hold_down"] == 0.0
    # a terminal drops when it cannot keep up; the file is lossless (it pauses the reader)
    assert console["buffer"] == {"max_events": 10_000, "when_full": "drop_newest"}
    assert events["buffer"] == {"max_events": 10_000, "when_full": "block"}
    assert events["type"] == "file"
    assert events["path"] == "var/events.jsonl"
    assert events["fsync"] == "interval"
    assert events["fsync_interval"] == 1.0
    assert events["events"] == ["*"]


def test_check_config_output_is_valid_input_again(tmp_path: Path) -> None:
    """The effective config is itself a valid config, and validating it changes nothing."""
    result = linkmond("check-config", "-c", str(ROOT / "config" / "linkmond.toml"))
    assert result.returncode == 0, result.stderr
    effective = json.loads(result.stdout)
    again = config_mod.Config.model_validate(effective)
    assert again.effective() == effective


# -- strict types: nothing is coerced -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "wrote"),
    [
        ('[sinks.out]\ntype = "console"\njson = "yes"\n', "sinks.out.json", "the string 'yes'"),
        ('[sinks.out]\ntype = "console"\njson = 1\n', "sinks.out.json", "the number 1"),
        (
            '[sinks.out]\ntype = "console"\nbuffer = { max_events = "10" }\n',
            "sinks.out.buffer.max_events",
            "the string '10'",
        ),
        (
            '[sinks.out]\ntype = "console"\nbuffer = { max_events = 10.0 }\n',
            "sinks.out.buffer.max_events",
            "the number 10.0",
        ),
        (f'[monitor]\ngroups = "link"\n{CONSOLE}', "monitor.groups", "the string 'link'"),
        (
            '[sinks.w]\ntype = "webhook"\nurl = "http://127.0.0.1:9/"\nsecret_env = "S"\n'
            'max_spool = "5"\n',
            "sinks.w.max_spool",
            "the string '5'",
        ),
        (
            '[sinks.w]\ntype = "webhook"\nurl = "http://127.0.0.1:9/"\nsecret_env = "S"\n'
            'tls_verify = "false"\n',
            "sinks.w.tls_verify",
            "the string 'false'",
        ),
        (
            '[sinks.j]\ntype = "journal"\npriorities = { "link.*" = "3" }\n',
            "sinks.j.priorities.link.*",
            "the string '3'",
        ),
    ],
)
def test_a_wrong_type_is_refused_not_coerced(text: str, key: str, wrote: str) -> None:
    found = problems(text)
    assert list(found) == [key]
    assert found[key].endswith(f", not {wrote}"), found[key]


@pytest.mark.parametrize(
    ("value", "key"),
    [("5", "path"), ('""', "path"), ("true", "path"), ("[]", "path")],
)
def test_a_path_must_be_a_non_empty_string(value: str, key: str) -> None:
    found = problems(f'[sinks.f]\ntype = "file"\n{key} = {value}\n')
    assert list(found) == [f"sinks.f.{key}"]
    assert "expected a path" in found[f"sinks.f.{key}"]


def test_durations_and_sizes_keep_their_human_strings_and_bare_numbers() -> None:
    config = parse_config(
        '[monitor]\nreceive_buffer = 1048576\n[daemon]\ndrain_timeout = "750ms"\n'
        '[sinks.out]\ntype = "console"\nhold_down = 2\n'
    )
    assert config.monitor.receive_buffer == 1024**2
    assert config.daemon.drain_timeout == pytest.approx(0.75)
    assert config.sinks["out"].hold_down == 2.0


# -- event globs must match an event type -------------------------------------------------------


@pytest.mark.parametrize(
    ("globs", "bad", "hint"),
    [
        ('["link.carier_lost"]', "'link.carier_lost'", "did you mean 'link.carrier_lost'?"),
        ('["*", "!link.carier_lost"]', "'!link.carier_lost'", "did you mean"),
        ('["lnk.*"]', "'lnk.*'", "types begin with addr., daemon., link."),
        ('["link.*", "addr.x*"]', "'addr.x*'", "the addr types are addr.added"),
    ],
)
def test_an_events_glob_matching_no_type_is_refused(globs: str, bad: str, hint: str) -> None:
    found = problems(f'[sinks.out]\ntype = "console"\nevents = {globs}\n')
    assert list(found) == ["sinks.out.events"]
    assert found["sinks.out.events"].startswith(f"{bad} matches no event type")
    assert hint in found["sinks.out.events"]


def test_journal_priority_globs_must_match_an_event_type() -> None:
    found = problems('[sinks.j]\ntype = "journal"\npriorities = { "link.carier_*" = 3 }\n')
    assert list(found) == ["sinks.j.priorities"]
    assert "matches no event type" in found["sinks.j.priorities"]


@pytest.mark.parametrize(
    "globs", ['["*"]', '["link.*", "!link.changed"]', '["daemon.*"]', '["route.?dded"]']
)
def test_events_globs_that_match_a_type_are_accepted(globs: str) -> None:
    parse_config(f'[sinks.out]\ntype = "console"\nevents = {globs}\n')


def test_every_event_type_the_docs_promise_is_known() -> None:
    from linkmond.events import EVENT_TYPES

    assert len(EVENT_TYPES) == len(set(EVENT_TYPES)) == 22
    families = {t.partition(".")[0] for t in EVENT_TYPES}
    assert families == {"link", "addr", "route", "neigh", "rule", "netconf", "daemon"}


# -- paths the daemon's user cannot write -------------------------------------------------------


def _file_sink_config(tmp_path: Path, sink_path: Path) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(f'[sinks.events]\ntype = "file"\npath = "{sink_path}"\n')
    return path


def test_a_file_sink_under_a_regular_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("")
    path = _file_sink_config(tmp_path, tmp_path / "plain" / "sub" / "events.jsonl")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        (
            "sinks.events.path",
            f"cannot create {tmp_path}/plain/sub/events.jsonl: {tmp_path}/plain is not a directory",
        )
    ]


def test_a_file_sink_path_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    path = _file_sink_config(tmp_path, tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [("sinks.events.path", f"{tmp_path} is a directory")]


def test_a_file_sink_path_whose_directories_do_not_exist_yet_is_fine(tmp_path: Path) -> None:
    load_config(_file_sink_config(tmp_path, tmp_path / "a" / "b" / "events.jsonl"))


def _as_nobody(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # setpriv (util-linux) drops to nobody like a unit's User= would
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        check=False,
    )


@pytest.mark.root
def test_check_config_and_run_refuse_a_path_the_daemon_user_cannot_write() -> None:
    # pytest's tmp_path lives under a 0700 directory; nobody must be able to read the config
    with tempfile.TemporaryDirectory(prefix="linkmond-test-") as tmp:
        tmp_path = Path(tmp)
        tmp_path.chmod(0o755)  # nobody may enter, but not write
        _refused_as_nobody(tmp_path)


def _refused_as_nobody(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o755)
    existing = tmp_path / "existing.jsonl"
    existing.write_text("")
    existing.chmod(0o644)
    config = tmp_path / "c.toml"
    config.write_text(
        f'[sinks.new]\ntype = "file"\npath = "{locked}/events.jsonl"\n'
        f'[sinks.old]\ntype = "file"\npath = "{existing}"\n'
    )
    config.chmod(0o644)
    for command in ("check-config", "run"):
        result = _as_nobody(
            str(ROOT / ".venv/bin/python"), "-m", "linkmond", command, "-c", str(config),
            cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == EX_CONFIG, result.stderr
        assert result.stderr.splitlines() == [
            f"linkmond: configuration error: {config}: sinks.new.path: cannot create "
            f"{locked}/events.jsonl: {locked} is not writable by user nobody",
            f"{config}: sinks.old.path: {existing} is not writable by user nobody",
        ]
    # as root, whom the same paths do not stop, the config is fine
    assert linkmond("check-config", "-c", str(config)).returncode == 0


def test_a_webhook_needs_a_state_directory_it_can_create(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("")
    path = tmp_path / "c.toml"
    path.write_text(
        f'[daemon]\nstate_directory = "{tmp_path}/plain/state"\n'
        '[sinks.w]\ntype = "webhook"\nurl = "http://127.0.0.1:9/"\nsecret_env = "S"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [(key, why)] = info.value.problems
    assert key == "daemon.state_directory"
    assert why.endswith("is not a directory (the webhook spool lives there)")


def test_check_config_notes_a_missing_default_file_on_stderr(tmp_path: Path) -> None:
    # the command's default path is /etc/linkmond/linkmond.toml; run it where that is absent
    if config_mod.DEFAULT_PATH.exists():
        pytest.skip(f"{config_mod.DEFAULT_PATH} exists on this machine")
    result = linkmond("check-config")
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        "linkmond: no /etc/linkmond/linkmond.toml; using the built-in default: console only\n"
    )
    assert list(json.loads(result.stdout)["sinks"]) == ["console"]


def test_a_file_sink_path_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real.jsonl").write_text("")
    (tmp_path / "events.jsonl").symlink_to(tmp_path / "real.jsonl")
    path = _file_sink_config(tmp_path, tmp_path / "events.jsonl")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [(key, why)] = info.value.problems
    assert key == "sinks.events.path"
    assert why.startswith(f"{tmp_path}/events.jsonl is a symlink")
