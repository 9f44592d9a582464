"""Added latency, throughput, CPU and memory of the /v1 proxy, measured with wrk.

    DATABASE_URL=postgres://… REDIS_URL=redis://… .venv/bin/python bench/proxy_latency.py

Every figure compares the same request sent through the proxy and straight to the fake
OpenAI server (tests/fakes/openai_server.py): added latency = proxy minus direct, at 1 and
32 connections, plain and streaming (events paced 5 ms apart, as a model emits them), plus
a cache hit. Proxy CPU is read from /proc for the uvicorn workers: per plain request and
per relayed stream event. Worker memory is sampled over a sustained run (--memory-seconds;
600 for the ten-minute check). Load generator, fake upstream and proxy share the machine,
so the machine's load average is printed next to every figure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import (  # noqa: E402
    cpu_seconds,
    django_setup,
    free_port,
    load,
    make_tenant,
    production_env,
    rss_mb,
    start_fake,
    start_proxy,
    stop,
    wait_for_port,
    worker_pids,
)

PLAIN = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
    "max_tokens": 50,
}
STREAM = {**PLAIN, "stream": True}
STREAM_EVENT_MS = 5
# Chunks the fake sends per chat stream: role, 20 words, finish, usage (+ [DONE]).
EVENTS_PER_STREAM = 24
# With n=4 choices the fake sends 4 x 22 + 2 = 90 events for the same request. The CPU
# per event is the slope between the two: what one more event costs, whatever the stream's
# fixed part (key, reservation, settle, log) costs at that load.
LONG_STREAM = {**STREAM, "n": 4}
EVENTS_PER_LONG_STREAM = 90

# A bare byte relay on the same event loop (uvloop), as many processes as the proxy has
# workers: the least any Python relay on this machine spends per paced event.
BARE_RELAY = """
import asyncio, sys, uvloop

UP_PORT, PORT = int(sys.argv[1]), int(sys.argv[2])

class Up(asyncio.Protocol):
    def __init__(self, down): self.down = down
    def connection_made(self, transport): self.transport = transport
    def data_received(self, data): self.down.transport.write(data)
    def connection_lost(self, exc): self.down.transport.close()

class Down(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.up, self.pending = transport, None, []
        asyncio.ensure_future(self.connect())
    async def connect(self):
        loop = asyncio.get_running_loop()
        _, self.up = await loop.create_connection(lambda: Up(self), "127.0.0.1", UP_PORT)
        for data in self.pending: self.up.transport.write(data)
    def data_received(self, data):
        if self.up is None: self.pending.append(data)
        else: self.up.transport.write(data)
    def connection_lost(self, exc):
        if self.up is not None: self.up.transport.close()

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Down, "127.0.0.1", PORT, reuse_port=True)
    await server.serve_forever()

uvloop.run(main())
"""

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [==[{body}]==]
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK {{"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, "p50_us": %d, "p99_us": %d}}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class Run:
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    cpu_s: float
    load: str

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def report(row: dict[str, object]) -> None:
    """One figure: a JSON line, printed at once (a run takes minutes)."""
    print(json.dumps(row, ensure_ascii=False), flush=True)


def wrk(
    url: str, body: dict, headers: dict[str, str], *, conns: int, seconds: int, pids: list[int]
) -> Run:
    lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(WRK_SCRIPT.format(body=json.dumps(body), headers=lines))
        script = fh.name
    threads = 1 if conns == 1 else 2
    before = cpu_seconds(pids)
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{conns}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            script,
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu = cpu_seconds(pids) - before
    Path(script).unlink()
    data = json.loads(out.split("WRK ", 1)[1])
    return Run(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        errors=data["errors"] + data["non2xx"],
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        cpu_s=cpu,
        load=load(),
    )


def compare(
    label: str,
    direct: Run,
    proxied: Run,
    *,
    events: int = 0,
    fake_events_cpu: float = 0.0,
    plain_cpu: float = 0.0,
) -> dict[str, object]:
    row: dict[str, object] = {
        "case": label,
        "direct p50/p99 ms": f"{direct.p50_ms:.2f} / {direct.p99_ms:.2f}",
        "proxy p50/p99 ms": f"{proxied.p50_ms:.2f} / {proxied.p99_ms:.2f}",
        "added p50/p99 ms": f"{proxied.p50_ms - direct.p50_ms:+.2f} / {proxied.p99_ms - direct.p99_ms:+.2f}",
        "req/s direct/proxy": f"{direct.rps:.0f} / {proxied.rps:.0f}",
        "proxy CPU ms/req": f"{1000 * proxied.cpu_s / max(proxied.requests, 1):.3f}",
        "errors": proxied.errors,
        "load": proxied.load,
    }
    if events:
        per_stream = proxied.cpu_s / max(proxied.requests, 1)
        row["proxy CPU µs/event"] = f"{1e6 * per_stream / events:.1f}"
        # What an event costs beyond the request it belongs to: the stream's CPU less a
        # plain request's at the same concurrency, per event.
        row["marginal proxy CPU µs/event (vs plain request)"] = (
            f"{1e6 * (per_stream - plain_cpu) / events:.1f}"
        )
        row["fake server CPU µs/event (direct run)"] = (
            f"{1e6 * fake_events_cpu / max(direct.requests * events, 1):.1f}"
        )
    report(row)
    return row


def idle_cpu_per_second(pids: list[int], seconds: float) -> float:
    """CPU seconds per second the processes spend serving nothing.

    uvicorn's main loop wakes ten times a second and its supervisor pings each worker
    twice a second: 6–11 ms of CPU a second per worker on this VM when idle.
    Runs of equal length with fewer, longer streams spread that over fewer requests, which
    the slope below would count as CPU per event (at 1 connection, most of it)."""
    before = cpu_seconds(pids)
    time.sleep(seconds)
    return (cpu_seconds(pids) - before) / seconds


def per_event_slope(short: Run, long: Run, idle: float = 0.0) -> float:
    """µs of CPU per event: the extra CPU of a 90-event stream over a 24-event one, less
    `idle` CPU seconds per second of each run when given (see `idle_cpu_per_second`)."""
    per_short = (short.cpu_s - idle * short.seconds) / max(short.requests, 1)
    per_long = (long.cpu_s - idle * long.seconds) / max(long.requests, 1)
    return 1e6 * (per_long - per_short) / (EVENTS_PER_LONG_STREAM - EVENTS_PER_STREAM)


def bare_relay_slopes(
    upstream: str, headers: dict[str, str], *, workers: int, seconds: int
) -> None:
    """The same paced streams through BARE_RELAY: its CPU per event, for comparison."""
    up_port = upstream.rsplit(":", 1)[1].split("/", 1)[0]
    port = free_port()
    procs = [
        subprocess.Popen([sys.executable, "-c", BARE_RELAY, up_port, str(port)])
        for _ in range(workers)
    ]
    try:
        wait_for_port(port)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        pids = [p.pid for p in procs]
        idle = idle_cpu_per_second(pids, seconds)
        for conns in (1, 32):
            short = wrk(url, STREAM, headers, conns=conns, seconds=seconds, pids=pids)
            long = wrk(url, LONG_STREAM, headers, conns=conns, seconds=seconds, pids=pids)
            report(
                {
                    "case": f"bare uvloop byte relay, {workers} processes, paced streams, {conns} conn",
                    "relay CPU µs/event (slope, 24 vs 90 events)": f"{per_event_slope(short, long):.1f}",
                    "relay idle CPU ms/s": f"{1000 * idle:.1f}",
                    "relay CPU µs/event (all of it, 24-event streams)": f"{1e6 * short.cpu_s / max(short.requests * EVENTS_PER_STREAM, 1):.1f}",
                    "load": long.load,
                }
            )
    finally:
        for proc in procs:
            stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run")
    parser.add_argument(
        "--memory-seconds", type=int, default=60, help="sustained run for RSS (600 = 10 min)"
    )
    parser.add_argument(
        "--plain-only",
        action="store_true",
        help="only the plain 1- and 32-connection cases (~1 min; for A/B runs of two builds)",
    )
    args = parser.parse_args()

    fake, upstream = start_fake()
    env = production_env(upstream=upstream)
    django_setup(env)
    key, _ = make_tenant(
        email=f"bench-{int(time.time())}@example.com",
        caps_usd={("account", "month"): "100", ("key", "day"): "50"},
    )
    proxy, base = start_proxy(env, workers=args.workers)
    try:
        pids = worker_pids(proxy.pid)
        print(
            f"# workers {pids}, ledger {'redis' if env.get('REDIS_URL') else 'sql'}, load {load()}",
            flush=True,
        )
        direct_h = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench-direct"}
        proxy_h = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
        off = {"X-BudgetLLM-Cache": "off"}
        paced = {"X-Fake-Delay-Ms": str(STREAM_EVENT_MS), "X-Fake-Stream-Delay-Only": "1"}
        chat_direct = upstream + "/chat/completions"
        chat_proxy = base + "/chat/completions"
        s = args.seconds
        # Warm both paths (connections, caches, first-request imports).
        wrk(chat_proxy, PLAIN, {**proxy_h, **off}, conns=4, seconds=2, pids=pids)
        wrk(chat_direct, PLAIN, direct_h, conns=4, seconds=2, pids=pids)

        idle = idle_cpu_per_second(pids, s)
        report({"case": "idle workers", "proxy CPU ms/s": f"{1000 * idle:.1f}", "load": load()})
        plain_cpu = {}
        for conns in (1, 32):
            d = wrk(chat_direct, PLAIN, direct_h, conns=conns, seconds=s, pids=pids)
            p = wrk(chat_proxy, PLAIN, {**proxy_h, **off}, conns=conns, seconds=s, pids=pids)
            compare(f"plain, {conns} conn", d, p)
            plain_cpu[conns] = p.cpu_s / max(p.requests, 1)
        if args.plain_only:
            return
        for conns in (1, 32):
            # The fake server's own CPU per paced event is this machine's cost of waking
            # up on an event: reported beside the proxy's.
            d = wrk(
                chat_direct, STREAM, {**direct_h, **paced}, conns=conns, seconds=s, pids=[fake.pid]
            )
            p = wrk(
                chat_proxy, STREAM, {**proxy_h, **off, **paced}, conns=conns, seconds=s, pids=pids
            )
            compare(
                f"stream ({EVENTS_PER_STREAM} events, {STREAM_EVENT_MS} ms apart), {conns} conn",
                d,
                p,
                events=EVENTS_PER_STREAM,
                fake_events_cpu=d.cpu_s,
                plain_cpu=plain_cpu[conns],
            )
            long = wrk(
                chat_proxy,
                LONG_STREAM,
                {**proxy_h, **off, **paced},
                conns=conns,
                seconds=s,
                pids=pids,
            )
            report(
                {
                    "case": f"paced streams of {EVENTS_PER_STREAM} and {EVENTS_PER_LONG_STREAM} events, {conns} conn",
                    "proxy CPU µs/event (slope)": f"{per_event_slope(p, long):.1f}",
                    "the same less idle CPU": f"{per_event_slope(p, long, idle):.1f}",
                    "proxy CPU ms/stream, 24 / 90 events": f"{1000 * p.cpu_s / max(p.requests, 1):.3f} / {1000 * long.cpu_s / max(long.requests, 1):.3f}",
                    "errors": long.errors,
                    "load": long.load,
                }
            )
        bare_relay_slopes(upstream, {**direct_h, **paced}, workers=args.workers, seconds=s)
        # The same stream in one burst: what relaying an event costs beyond a plain request.
        p = wrk(chat_proxy, STREAM, {**proxy_h, **off}, conns=1, seconds=s, pids=pids)
        marginal = (p.cpu_s / max(p.requests, 1) - plain_cpu[1]) / EVENTS_PER_STREAM
        report(
            {
                "case": f"stream in one burst, 1 conn ({p.requests} streams)",
                "proxy CPU ms/stream": f"{1000 * p.cpu_s / max(p.requests, 1):.3f}",
                "marginal proxy CPU µs/event (vs plain request)": f"{1e6 * marginal:.1f}",
                "load": p.load,
            }
        )
        # Cache hit: the first request fills the cache, every later one is a hit.
        d = wrk(chat_direct, PLAIN, direct_h, conns=1, seconds=s, pids=pids)
        p = wrk(chat_proxy, PLAIN, proxy_h, conns=1, seconds=s, pids=pids)
        compare("cache hit, 1 conn", d, p)

        samples: dict[int, list[float]] = {pid: [] for pid in pids}
        stop_sampling = threading.Event()

        def sample() -> None:
            while not stop_sampling.is_set():
                for pid in pids:
                    samples[pid].append(rss_mb(pid))
                stop_sampling.wait(2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        run = wrk(
            chat_proxy, PLAIN, {**proxy_h, **off}, conns=8, seconds=args.memory_seconds, pids=pids
        )
        stop_sampling.set()
        sampler.join()
        for pid, values in samples.items():
            third = max(len(values) // 3, 1)
            report(
                {
                    "case": f"memory, worker {pid}, {args.memory_seconds} s at 8 conns ({run.requests} requests)",
                    "rss MB start/end/max": f"{values[0]:.1f} / {values[-1]:.1f} / {max(values):.1f}",
                    "mean first/last third MB": f"{sum(values[:third]) / third:.1f} / {sum(values[-third:]) / third:.1f}",
                    "load": run.load,
                }
            )
    finally:
        stop(proxy)
        stop(fake)


if __name__ == "__main__":
    main()
