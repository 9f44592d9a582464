"""Instructions per proxied request: a figure that does not move with the machine's load.

Timings on a shared 2-core VM vary by ±30 % from one run to the next; the number of
instructions the proxy executes for a request does not (±3 %). This drives the /v1 ASGI
app in-process (no uvicorn, no wrk) against the fake OpenAI server and Redis, under
valgrind's callgrind with collection switched on only for the measured requests, and
prints instructions (Ir) per plain request and per streamed one (24 events). Use it to
A/B two builds; it counts user-space instructions only, so system calls (one per socket
write) are not in it: proxy_latency.py is the figure of record.

    .venv/bin/python bench/proxy_instructions.py            # ~2 min; needs valgrind
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._harness import (  # noqa: E402
    django_setup,
    make_tenant,
    production_env,
    start_fake,
    stop,
)
from bench.proxy_latency import (  # noqa: E402
    EVENTS_PER_LONG_STREAM,
    EVENTS_PER_STREAM,
    LONG_STREAM,
    PLAIN,
    STREAM,
)


def total_ir(path: str) -> int:
    counts = [
        int(line.split()[1])
        for line in Path(path).read_text().splitlines()
        if line.startswith(("summary:", "totals:"))
    ]
    if not counts:
        raise RuntimeError(f"no totals in {path}")
    return max(counts)


def outer(args: argparse.Namespace) -> None:
    labels = ("stream", "long-stream") if args.paced else ("plain", "stream")
    irs = {}
    for label in labels:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "callgrind.out")
            subprocess.run(
                [
                    "valgrind",
                    "--tool=callgrind",
                    "--instr-atstart=no",
                    f"--callgrind-out-file={out}",
                    sys.executable,
                    __file__,
                    "--inner",
                    label,
                    "--requests",
                    str(args.requests),
                    *(["--paced"] if args.paced else []),
                ],
                check=True,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            ir = irs[label] = total_ir(out)
        row = {
            "case": f"{label}{', paced' if args.paced else ''}",
            "requests": args.requests,
            "Ir/request": ir // args.requests,
        }
        print(json.dumps(row), flush=True)
    if args.paced:
        per_event = (
            (irs["long-stream"] - irs["stream"])
            / args.requests
            / (EVENTS_PER_LONG_STREAM - EVENTS_PER_STREAM)
        )
        print(json.dumps({"case": "paced, per event (slope)", "Ir/event": round(per_event)}))


def inner(label: str, requests: int, paced: bool) -> None:
    fake, upstream = start_fake()
    try:
        # The key cache refreshes a key in use every 1.5 s of wall time; under callgrind,
        # ~50x slower, that would be counted ~50x too often per request.
        env = production_env(upstream=upstream, PROXY_KEY_CACHE_SECONDS="3600")
        os.environ.update({k: v for k, v in env.items() if k.isupper()})
        django_setup(env)
        key, _ = make_tenant(
            email=f"instructions-{time.time()}@example.com",
            caps_usd={("account", "month"): "100", ("key", "day"): "50"},
        )
        import uvloop

        from proxy.app import v1_app

        payload = {"plain": PLAIN, "stream": STREAM, "long-stream": LONG_STREAM}[label]
        body = json.dumps(payload).encode()
        # Paced: one event every 5 ms, so each arrives on its own, as from a model.
        pacing = [(b"x-fake-delay-ms", b"5"), (b"x-fake-stream-delay-only", b"1")]
        headers = [
            *(pacing if paced else []),
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"authorization", f"Bearer {key}".encode()),
            (b"x-budgetllm-cache", b"off"),
            (b"content-length", str(len(body)).encode()),
        ]

        async def one() -> None:
            scope = {
                "type": "http",
                "method": "POST",
                "path": "/v1/chat/completions",
                "headers": headers,
                "query_string": b"",
                "client": ("127.0.0.1", 1),
            }
            sent: list[dict[str, Any]] = []
            delivered = False

            async def receive() -> dict[str, Any]:
                nonlocal delivered
                if not delivered:
                    delivered = True
                    return {"type": "http.request", "body": body, "more_body": False}
                await asyncio.sleep(3600)  # no disconnect: the client waits for its answer
                return {"type": "http.disconnect"}

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            await v1_app(scope, receive, send)
            if sent[0]["status"] != 200:
                raise RuntimeError(f"the proxy answered {sent[0]}")

        async def main() -> None:
            for _ in range(200):  # warm: connections, caches, first-call imports
                await one()
            gate = asyncio.Semaphore(16)

            async def limited() -> None:
                async with gate:
                    await one()

            pid = str(os.getpid())
            subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
            await asyncio.gather(*(limited() for _ in range(requests)))
            subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)

        uvloop.run(main())
    finally:
        stop(fake)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument(
        "--paced",
        action="store_true",
        help="streams of 24 and 90 events paced 5 ms apart: instructions per relayed event",
    )
    parser.add_argument(
        "--inner", choices=["plain", "stream", "long-stream"], help=argparse.SUPPRESS
    )
    parsed = parser.parse_args()
    if parsed.inner:
        inner(parsed.inner, parsed.requests, parsed.paced)
    else:
        outer(parsed)
