"""The benchmarks in bench/ run, at smoke sizes, against the daemon in the tree.

Each script is run as a user runs it (a subprocess, in its own throwaway namespace) and must
exit 0, which each does only if the daemon delivered every event it measures, and print its
table (or, with ``--json``, one JSON object).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.netns


def bench(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    return proc.stdout


def test_storm() -> None:
    out = bench("storm.py", "--routes", "200", "--quiet", "5", "--settle", "1")
    assert "route storm: 200 IPv4 /32 routes" in out
    assert "anchor ip monitor: routes printed" in out


def test_storm_json() -> None:
    result = json.loads(
        bench("storm.py", "--routes", "200", "--quiet", "5", "--settle", "1", "--json")
    )
    (run,) = result["runs"]
    assert run["live"] + run["resync"] == 200
    assert run["missing"] == run["duplicates"] == 0


def test_flip() -> None:
    out = bench("flip.py", "--routes", "0,200", "--flips", "5", "--gap", "0.01")
    assert "carrier flips: 5 down+up cycles" in out
    assert "ip mon n" in out


def test_flush() -> None:
    out = bench("flush.py", "--routes", "200", "--quiet", "5", "--settle", "1")
    assert "route flush: 200 IPv4 /32 routes" in out
    assert "of them flagged resync" in out


def test_replay() -> None:
    out = bench("replay.py", "--routes", "200", "--repeat", "1")
    assert "ip monitor file REC" in out
    assert "200 of 200 routes as route.added, 0 missing, 0 duplicates" in out


def test_netns() -> None:
    out = bench("netns.py", "--namespaces", "2", "--follows", "2", "--flips", "4", "--gap", "0.01")
    assert 'the daemon with netns = "all"' in out
    assert "ratio p50" in out


def test_fleet() -> None:
    out = bench("fleet.py", "--hosts", "2", "--seconds", "1")
    assert "fleet: N hosts x 8 links" in out
    assert "read back: 0 missing, 0 duplicates, 0 out of order" in out
