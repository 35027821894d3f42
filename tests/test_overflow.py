"""Receive-buffer overflow: lost notifications come back from a re-dump, flagged resync."""

from __future__ import annotations

import pytest

from tests.helpers import Daemon, NetNS, default_config, wait_for

pytestmark = pytest.mark.netns


def test_overflow_resync_reports_every_change_and_one_daemon_overflow(
    ns: NetNS, daemon_factory, tmp_path
) -> None:
    ns.veth("lm0", "lm0p")
    # the smallest buffer the kernel allows, so a burst of routes overflows it
    extra = '\n[monitor]\nreceive_buffer = "1KiB"\ngroups = ["link", "route"]\n'
    config = default_config(tmp_path / "events.jsonl").replace("[log]", extra + "\n[log]", 1)
    daemon: Daemon = daemon_factory(config=config)
    batch = tmp_path / "routes.batch"
    batch.write_text("".join(f"route add 2001:db8:1::{i:x}/128 dev lm0\n" for i in range(1, 2001)))
    ns.ip("-6", "-batch", str(batch))
    overflow = daemon.wait_event(lambda e: e["type"] == "daemon.overflow", what="daemon.overflow")
    wanted = {f"2001:db8:1::{i:x}/128" for i in range(1, 2001)}

    def missing() -> set[str]:
        added = {e["subject"] for e in daemon.events() if e["type"] == "route.added"}
        return wanted - added

    wait_for(lambda: not missing(), timeout=20, what="every route reported")
    daemon.barrier()
    events = daemon.events()
    resynced = [e for e in events if e["type"] == "route.added" and e["data"]["resync"]]
    assert resynced, "an overflow lost nothing? the re-dump should have found routes"
    assert overflow["data"]["events"] >= len([e for e in resynced if e["seq"] < overflow["seq"]])
    assert overflow["data"]["overflows"] >= 1
    # the re-dump announces nothing twice: one route.added per route
    subjects = [
        e["subject"] for e in events if e["type"] == "route.added" and e["subject"] in wanted
    ]
    assert len(subjects) == len(set(subjects))
