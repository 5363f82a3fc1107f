"""Collector throughput, in one run on one embedded PostgreSQL, with its baselines:

  per-event   the original design's "before" (docs/): one INSERT and one commit per event (no HTTP)
  raw COPY    the same rows with one COPY per 100-row batch, no HTTP: the ceiling for batches
  batches     POST /collect with 100 events per request, through `pixelpipe collector`
  segment     POST /v1/batch with the same 100 events as Segment messages (write key, messageIds),
              as Segment's and RudderStack's SDKs send them; compared with `batches` in five
              back-to-back pairs of runs, alternating which goes first
  pixel       GET /i, every one committed, p50/p99 latency
  bare        a Starlette endpoint on uvicorn that returns the GIF and stores nothing

Load comes from wrk (Debian: apt-get install wrk) over loopback, bounded in time.
Usage: python bench/ingest.py [--seconds 10] [--workers 1] [--connections 64]
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import orjson  # noqa: E402
import psycopg  # noqa: E402

from bench.servers import benchmark_servers  # noqa: E402
from ingest_service.events import EVENT_COLUMNS, RequestContext, event_row  # noqa: E402
from pixelpipe.core import sites  # noqa: E402
from pixelpipe.core.events_log import COPY_EVENTS, ensure_partitions  # noqa: E402
from pixelpipe.process import free_port  # noqa: E402

BARE_APP = '''
import base64
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
async def pixel(request):
    return Response(GIF, media_type="image/gif", headers={"Cache-Control": "no-store"})
app = Starlette(routes=[Route("/i", pixel)])
'''


def sample_event(n: int) -> dict:
    return {"eventType": "click", "siteId": f"site-{n % 20}", "sessionId": f"s{n % 5000}",
            "visitorId": f"v{n % 20000}", "url": f"https://shop.example.com/products/{n % 997}",
            "timestamp": "2026-11-24T12:00:00Z", "button": {"id": n % 13, "label": "Add to cart"}}


def segment_message(n: int) -> dict:
    """sample_event(n) as a Segment SDK sends it."""
    event = sample_event(n)
    return {"type": "track", "event": event["eventType"], "messageId": str(uuid.UUID(int=n, version=4)),
            "userId": event["visitorId"], "timestamp": event["timestamp"],
            "properties": {"button": event["button"]},
            "context": {"page": {"url": event["url"]}, "sessionId": event["sessionId"],
                        "library": {"name": "analytics-python", "version": "2.4.0"}}}


def post_script(path: Path, body: bytes, headers: dict) -> str:
    lines = ['wrk.method = "POST"'] + [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    path.write_text("\n".join(lines) + f"\nwrk.body = {orjson.dumps(body.decode()).decode()}\n")
    return str(path)


def rows(count: int) -> list[tuple]:
    context = RequestContext(datetime.now(UTC), "198.51.100.7", "Mozilla/5.0 (bench)", None)
    return [event_row(sample_event(n), context) for n in range(count)]


def per_event_baseline(url: str, count: int) -> float:
    placeholders = ", ".join(["%s"] * len(EVENT_COLUMNS))
    columns = ", ".join(EVENT_COLUMNS).replace("timestamp", '"timestamp"')
    data = rows(count)
    with psycopg.connect(url) as conn:
        started = time.perf_counter()
        for row in data:
            conn.execute(f"INSERT INTO events_log ({columns}) VALUES ({placeholders})", row)
            conn.commit()
        return count / (time.perf_counter() - started)


def raw_copy(url: str, count: int, batch: int) -> float:
    """COPY of pre-built rows, one transaction per `batch` rows, no HTTP."""
    data = rows(count)
    with psycopg.connect(url) as conn:
        started = time.perf_counter()
        for start in range(0, count, batch):
            with conn.transaction(), conn.cursor() as cur, cur.copy(COPY_EVENTS) as copy:
                for row in data[start:start + batch]:
                    copy.write_row(row)
        return count / (time.perf_counter() - started)


def wrk(url: str, seconds: int, connections: int, script: str | None = None) -> dict:
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s"]
    if script:
        argv += ["-s", script]
    output = subprocess.run(argv + [url], capture_output=True, text=True, check=True).stdout
    def latency(pct):
        value, unit = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M).groups()
        return float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
    total = int(re.search(r"(\d+) requests in", output).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
            "p50": latency(50), "p99": latency(99), "requests": total,
            "non2xx": int(bad.group(1)) if bad else 0}


def serve(argv: list[str], env: dict, port: int) -> subprocess.Popen:
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/i", timeout=1)
            return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{argv} did not start")


def settle(url: str) -> None:
    """Start each phase from the same state: no dirty buffers left by the previous one."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def count_events(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM events_log").fetchone()[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    with benchmark_servers() as servers, tempfile.TemporaryDirectory() as folder:
        url = servers["database_url"]
        with psycopg.connect(url, autocommit=True) as conn:
            ensure_partitions(conn)
        per_event = per_event_baseline(url, 3000)
        settle(url)
        copy_per_request = raw_copy(url, 100_000, 100)
        settle(url)
        ceiling = raw_copy(url, 200_000, 200_000)  # one COPY, one commit: the strict ceiling

        with psycopg.connect(url, autocommit=True) as conn:
            sites.save_site(conn, "bench-segment", create=True)
            write_key = sites.new_write_key(conn, "bench-segment")
        env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        port = free_port()
        collector = serve([sys.executable, "-m", "pixelpipe.cli", "collector", "--port", str(port),
                           "--workers", str(args.workers)], env, port)
        try:
            body = orjson.dumps({"eventType": "batch", "events": [sample_event(n) for n in range(100)]})
            script = batch_script = post_script(Path(folder) / "batch.lua", body, {"Content-Type": "application/json"})
            settle(url)
            before = count_events(url)
            batches = wrk(f"http://127.0.0.1:{port}/collect", args.seconds, args.connections, script)
            batch_rows = count_events(url) - before
            body = orjson.dumps({"batch": [segment_message(n) for n in range(100)]})
            auth = base64.b64encode(f"{write_key}:".encode()).decode()
            script = post_script(Path(folder) / "segment.lua", body, {
                "Content-Type": "application/json", "Authorization": f"Basic {auth}"})
            settle(url)
            before = count_events(url)
            segment = wrk(f"http://127.0.0.1:{port}/v1/batch", args.seconds, args.connections, script)
            segment_rows = count_events(url) - before
            settle(url)
            before = count_events(url)
            pixel = wrk(f"http://127.0.0.1:{port}/i?eventType=pageview&siteId=bench&url=https%3A%2F%2Fshop.example.com%2F",
                        args.seconds, args.connections)
            pixel_rows = count_events(url) - before
            # The comparison itself: runs of each, back to back, five pairs in alternating order,
            # each run from a checkpoint (this machine drifts between runs more than the two paths
            # differ, and whichever runs second inherits the first one's WAL).
            paired = []
            for n in range(5):
                order = [("/collect", batch_script), ("/v1/batch", script)][:: 1 if n % 2 == 0 else -1]
                done = {}
                for path, lua in order:
                    settle(url)
                    run = wrk(f"http://127.0.0.1:{port}{path}", args.seconds, args.connections, lua)
                    done[path] = run["requests"] - run["non2xx"]
                paired.append(done["/v1/batch"] / done["/collect"])
        finally:
            collector.terminate()
            collector.wait(30)
        app = Path(folder) / "bare.py"
        app.write_text(BARE_APP)
        bare_port = free_port()
        bare_server = serve([sys.executable, "-m", "uvicorn", "--app-dir", folder, "bare:app", "--port",
                             str(bare_port), "--workers", str(args.workers), "--no-access-log",
                             "--log-level", "warning"], env, bare_port)
        try:
            bare = wrk(f"http://127.0.0.1:{bare_port}/i", args.seconds, args.connections)
        finally:
            bare_server.terminate()
            bare_server.wait(30)

    batch_eps = (batches["requests"] - batches["non2xx"]) * 100 / args.seconds
    print(f"per-event INSERT+commit  : {per_event:>10,.0f} events/s")
    print(f"raw COPY, one transaction: {ceiling:>10,.0f} events/s  (ceiling, no HTTP)")
    print(f"raw COPY, commit per 100 : {copy_per_request:>10,.0f} events/s  (no HTTP)")
    print(f"POST /collect x100        : {batch_eps:>10,.0f} events/s  ({batches['rps']:,.0f} req/s, "
          f"p50 {batches['p50']:.1f} ms, p99 {batches['p99']:.1f} ms, non-2xx {batches['non2xx']}, "
          f"rows committed {batch_rows:,})")
    segment_eps = (segment["requests"] - segment["non2xx"]) * 100 / args.seconds
    print(f"POST /v1/batch x100       : {segment_eps:>10,.0f} events/s  ({segment['rps']:,.0f} req/s, "
          f"p50 {segment['p50']:.1f} ms, p99 {segment['p99']:.1f} ms, non-2xx {segment['non2xx']}, "
          f"rows committed {segment_rows:,})")
    print(f"GET /i pixel              : {pixel['rps']:>10,.0f} req/s     (p50 {pixel['p50']:.1f} ms, "
          f"p99 {pixel['p99']:.1f} ms, non-2xx {pixel['non2xx']}, rows committed {pixel_rows:,})")
    print(f"bare GIF endpoint         : {bare['rps']:>10,.0f} req/s     (p50 {bare['p50']:.1f} ms, p99 {bare['p99']:.1f} ms)")
    print(f"batches: {batch_eps / ceiling:.2f}x the raw-COPY ceiling, {batch_eps / per_event:.1f}x the per-event "
          f"baseline; pixel: {pixel['rps'] / bare['rps']:.2f}x the bare endpoint, p99 {pixel['p99']:.1f} ms "
          f"(workers={args.workers}, connections={args.connections})")
    print(f"segment batches: {sorted(paired)[2]:.2f}x the /collect batches, median of five back-to-back "
          f"pairs ({', '.join(f'{r:.2f}' for r in paired)}; target: at least 0.80)")


if __name__ == "__main__":
    main()
