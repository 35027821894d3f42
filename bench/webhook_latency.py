"""Cable pull → verified webhook: latency from the kernel change to the receiver's check.

In a throwaway network namespace: a veth pair lm0/lm0p, the daemon (a real ``linkmond run``)
with one webhook sink for ``link.carrier_lost`` on lm0, and a local aiohttp receiver (this
script with ``--serve``) that verifies each Standard Webhooks signature. Each flap takes
``time.time()`` just before ``ip link set lm0p down`` and the receiver's ``time.time()`` right
after the signature verified; both processes share the host clock. The first flap (which
opens the TCP connection) is reported apart; median and max are over the rest.

    sudo .venv/bin/python bench/webhook_latency.py [--flaps 20]

Needs root (network namespaces). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PORT = 18080


def serve(port: int, secret: str) -> None:
    """The receiver: verify, print ``{"id", "type", "subject", "t"}`` per request, answer 204."""
    from aiohttp import web
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    verifier = Webhook(secret)

    async def handle(request: web.Request) -> web.Response:
        body = await request.text()
        try:
            event = verifier.verify(body, dict(request.headers))
        except WebhookVerificationError as exc:
            print(json.dumps({"error": str(exc)}), flush=True)
            return web.Response(status=401)
        t = time.time()
        print(
            json.dumps({"t": t, "id": event["id"], "type": event["type"], "sub": event["subject"]}),
            flush=True,
        )
        return web.Response(status=204)

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/hook", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print(json.dumps({"ready": True}), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True)


def read_line(proc: subprocess.Popen[str], timeout: float) -> dict[str, object]:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError(f"no request at the receiver within {timeout}s")
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError("the receiver exited")
    return json.loads(line)  # type: ignore[no-any-return]


def wait_carrier(ns: str, up: bool, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["ip", "-n", ns, "-o", "link", "show", "lm0"],
            check=False,
            capture_output=True,
            text=True,
        ).stdout
        if ("NO-CARRIER" not in out) == up:
            return
        time.sleep(0.01)
    raise TimeoutError("lm0 carrier did not change")


def run(flaps: int) -> dict[str, object]:
    ns = f"lmbench-{uuid.uuid4().hex[:8]}"
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    procs: list[subprocess.Popen[str]] = []
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        with tempfile.TemporaryDirectory(prefix="lmbench-") as tmp:
            work = Path(tmp)
            (work / "secret").write_text(secret)
            (work / "secret").chmod(0o600)  # a secret readable by others is refused
            (work / "linkmond.toml").write_text(
                '[log]\nlevel = "info"\nformat = "json"\n\n'
                f'[daemon]\nstate_directory = "{work / "state"}"\n\n'
                f'[sinks.hook]\ntype = "webhook"\nurl = "http://127.0.0.1:{PORT}/hook"\n'
                f'secret_file = "{work / "secret"}"\n'
                'events = ["link.carrier_lost"]\ninterfaces = ["lm0"]\n'
            )
            ip(ns, "link", "set", "lo", "up")
            ip(ns, "link", "add", "lm0", "type", "veth", "peer", "name", "lm0p")
            ip(ns, "link", "set", "lm0", "up")
            ip(ns, "link", "set", "lm0p", "up")
            exec_ns = ["ip", "netns", "exec", ns, sys.executable]
            receiver = subprocess.Popen(
                [*exec_ns, __file__, "--serve", "--port", str(PORT), "--secret", secret],
                stdout=subprocess.PIPE,
                text=True,
            )
            procs.append(receiver)
            read_line(receiver, 15)
            stderr = work / "daemon.stderr"
            daemon = subprocess.Popen(
                [*exec_ns, "-m", "linkmond", "run", "-c", str(work / "linkmond.toml")],
                stderr=stderr.open("w"),
                cwd=ROOT,
                text=True,
            )
            procs.append(daemon)
            deadline = time.monotonic() + 15
            while '"event": "started"' not in stderr.read_text():
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"daemon did not start: {stderr.read_text()}")
                time.sleep(0.05)
            wait_carrier(ns, up=True)
            latencies = []
            for _ in range(flaps + 1):
                t0 = time.time()
                ip(ns, "link", "set", "lm0p", "down")
                got = read_line(receiver, 15)
                if got.get("type") != "link.carrier_lost" or got.get("sub") != "lm0":
                    raise RuntimeError(f"unexpected request: {got}")
                latencies.append((float(got["t"]) - t0) * 1000)  # type: ignore[arg-type]
                wait_carrier(ns, up=False)
                ip(ns, "link", "set", "lm0p", "up")
                wait_carrier(ns, up=True)
            first, rest = latencies[0], latencies[1:]
            return {
                "flaps": len(rest),
                "median_ms": round(statistics.median(rest), 2),
                "max_ms": round(max(rest), 2),
                "min_ms": round(min(rest), 2),
                "first_ms": round(first, 2),
                "note": "from time.time() before `ip link set peer down` to the receiver "
                "having verified the signature; the first flap (TCP connect) apart",
            }
    finally:
        for proc in reversed(procs):  # our own children, by PID
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flaps", type=int, default=20)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=PORT, help=argparse.SUPPRESS)
    parser.add_argument("--secret", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.port, args.secret)
        return
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    print(json.dumps(run(args.flaps), indent=2))


if __name__ == "__main__":
    main()
