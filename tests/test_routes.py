"""RouteTable: the compact route cache must behave exactly like a dict of full routes.

Routes here are built by hand (the decoder's own tests cover decoding); keys are what the
decoder builds: ``(family, table, dst, src, tos, metric, hops)``.
"""

from __future__ import annotations

import random
import socket

from linkmond.routes import Hop, Route, RouteTable, hops_of

V4, V6 = socket.AF_INET, socket.AF_INET6


def make(
    dst: str,
    *,
    gateway: str | None = None,
    oif: int | None = 3,
    table: int = 254,
    metric: int = 0,
    prefsrc: str | None = None,
    nexthops: tuple[Hop, ...] | None = None,
    family: int = V4,
) -> tuple[tuple[object, ...], Route]:
    route = Route(
        "inet" if family == V4 else "inet6",
        dst,
        None,
        gateway,
        None if nexthops else oif,
        {254: "main", 255: "local"}.get(table, str(table)),
        "boot",
        "global",
        "unicast",
        metric,
        prefsrc,
        0,
        nexthops,
    )
    return (family, table, dst, None, 0, metric, hops_of(route)), route


def test_put_get_pop_and_len() -> None:
    table = RouteTable()
    key, route = make("198.51.100.0/24")
    assert table.put(key, route, replace=False) is None
    assert table.get(key) == route
    assert key in table
    assert len(table) == 1
    assert list(table) == [key]
    assert list(table.values()) == [route]
    assert table.pop(key) == (route, [])
    assert len(table) == 0
    assert table.get(key) is None
    assert table.pop(key) == (None, [])


def test_a_repeat_returns_the_old_route_for_the_diff() -> None:
    table = RouteTable()
    key, route = make("198.51.100.0/24")
    table.put(key, route, replace=False)
    _, changed = make("198.51.100.0/24", prefsrc="192.0.2.1")
    assert table.put(key, changed, replace=False) == route
    assert table.get(key) == changed
    assert table.keys_with_prefsrc("192.0.2.1") == [key]


def test_same_destination_in_other_tables_and_metrics_are_other_routes() -> None:
    table = RouteTable()
    entries = [
        make("192.0.2.1/32", table=254),
        make("192.0.2.1/32", table=255),
        make("192.0.2.1/32", table=254, metric=100),
    ]
    for key, route in entries:
        assert table.put(key, route, replace=False) is None
    assert len(table) == 3
    for key, route in entries:
        assert table.get(key) == route
    assert table.pop(entries[1][0]) == (entries[1][1], [])
    assert sorted(r.table for r in table.values()) == ["main", "main"]
    assert len(table) == 2


def test_appended_routes_share_a_slot_until_one_replaces_them() -> None:
    table = RouteTable()
    first = make("198.51.100.0/24", gateway="192.0.2.2")
    second = make("198.51.100.0/24", gateway="192.0.2.3")
    table.put(*first, replace=False)
    assert table.put(*second, replace=False) is None  # `ip route append`: both exist
    assert len(table) == 2
    # a deletion of a third next hop matches nothing: the slot's other keys are returned
    third = make("198.51.100.0/24", gateway="192.0.2.9")
    route, others = table.pop(third[0])
    assert route is None
    assert sorted(others) == sorted([first[0], second[0]])
    # NLM_F_REPLACE: the new route takes the whole slot, compared against one it replaced
    replacing = make("198.51.100.0/24", gateway="192.0.2.4")
    old = table.put(*replacing, replace=True)
    assert old in (first[1], second[1])
    assert list(table.values()) == [replacing[1]]
    assert len(table) == 1


def test_a_multipath_route_takes_its_whole_slot_but_not_other_tables() -> None:
    table = RouteTable()
    table.put(*make("198.51.100.0/24", gateway="192.0.2.2"), replace=False)
    table.put(*make("198.51.100.0/24", gateway="192.0.2.2", table=100), replace=False)
    hops = (Hop("192.0.2.2", 3, 1), Hop("192.0.2.3", 4, 1))
    key, multi = make("198.51.100.0/24", nexthops=hops)
    old = table.put(key, multi, replace=False)
    assert old is not None
    assert old.gateway == "192.0.2.2"
    assert sorted(r.table for r in table.values()) == ["100", "main"]
    assert table.has_via(4)
    assert table.count_via(3) == 2  # the multipath route and table 100's


def test_the_device_index_follows_every_change() -> None:
    table = RouteTable()
    key, route = make("198.51.100.0/24", oif=3)
    table.put(key, route, replace=False)
    assert (table.has_via(3), table.has_via(4)) == (True, False)
    moved = make("198.51.100.0/24", oif=4)[1]
    table.put(make("198.51.100.0/24", oif=4)[0], moved, replace=True)  # another next hop
    assert (table.has_via(3), table.has_via(4)) == (False, True)
    assert table.keys_via(4) == [make("198.51.100.0/24", oif=4)[0]]
    assert not table.has_via(4, V6)
    table.pop(make("198.51.100.0/24", oif=4)[0])
    assert not table.has_via(4)
    assert table.keys_via(4) == []


def test_marks_tell_a_sweep_what_a_dump_did_not_show() -> None:
    table = RouteTable()
    shown = make("198.51.100.0/24", oif=3)
    hidden = make("198.51.100.128/25", oif=3)
    elsewhere = make("203.0.113.0/24", oif=4)
    v6 = make("2001:db8::/64", oif=3, family=V6)
    for key, route in (shown, hidden, elsewhere, v6):
        table.put(key, route, replace=False)
    mark = table.begin_mark()
    table.put(*shown, replace=False)  # what the dump showed is written again
    assert table.unmarked(mark, V4, 3) == ["198.51.100.128/25"]
    assert table.stale_keys("198.51.100.128/25", mark, V4, 3) == [hidden[0]]
    assert sorted(table.unmarked(mark)) == ["198.51.100.128/25", "2001:db8::/64", "203.0.113.0/24"]
    assert table.unmarked(mark, V6, 3) == ["2001:db8::/64"]


def test_against_a_plain_dict_model() -> None:
    """Random puts and pops, single-path: the table answers as a dict would."""
    rng = random.Random(7)
    table = RouteTable()
    model: dict[tuple[object, ...], Route] = {}
    for _ in range(3000):
        dst = f"198.51.100.{rng.randrange(16)}/32"
        key, route = make(
            dst,
            oif=rng.choice((3, 4)),
            table=rng.choice((254, 255)),
            metric=rng.choice((0, 100)),
            gateway=rng.choice((None, "192.0.2.1")),
        )
        if rng.random() < 0.4:
            got, _ = table.pop(key)
            assert got == model.pop(key, None)
        else:
            table.put(key, route, replace=True)
            for other in [k for k in model if k[:6] == key[:6] and k != key]:
                del model[other]  # replace takes the slot
            model[key] = route
        assert len(table) == len(model)
    assert sorted(table, key=repr) == sorted(model, key=repr)
    for key, route in model.items():
        assert table.get(key) == route
    for oif in (3, 4):
        assert sorted(table.keys_via(oif), key=repr) == sorted(
            (k for k, r in model.items() if r.ifindex == oif), key=repr
        )
