"""What orjson buys: the cost of an event's JSON, pydantic's serializer against linkmond's.

Builds N ``route.added`` events the way the daemon does and serialises each once, first
with pydantic's ``model_dump_json()`` (the schema's own serializer), then with
``Event.jsonl`` (orjson, the text a test holds equal to pydantic's), keeping the results
alive as a sink's queue does.

    .venv/bin/python bench/event_json.py [--events 100000]

No root needed. Prints microseconds per event for each.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from linkmond.events import Event, EventFactory


def route_data(i: int) -> dict[str, Any]:
    return {
        "family": "inet", "dst": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32",
        "src": None, "gateway": None, "ifindex": 2, "table": "main", "protocol": "boot",
        "scope": "global", "type": "unicast", "metric": 0, "prefsrc": None, "tos": 0,
        "nexthops": None, "ifname": "b0", "changes": {}, "resync": False,
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    factory = EventFactory("/linkmond/bench", "default")
    ways = (
        ("pydantic model_dump_json()", lambda e: e.model_dump_json()),
        ("Event.jsonl (orjson)", lambda e: e.jsonl),
    )
    for name, serialise in ways:
        events: list[Event] = [
            factory.make("route.added", "x", route_data(i)) for i in range(args.events)
        ]
        t0 = time.perf_counter()
        kept = [serialise(e) for e in events]
        elapsed = time.perf_counter() - t0
        print(f"{name:<28} {elapsed / len(kept) * 1e6:6.2f} us/event")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
