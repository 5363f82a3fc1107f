"""Where the collector's CPU goes, per request kind: py-spy samples one collector worker under
wrk load (a pixel, then a 100-event /collect batch, then a 100-message Segment batch) and sorts
the samples into the stages docs/benchmarks.md reports.

Usage: python bench/profile_ingest.py [--seconds 10] [--connections 32]
Needs wrk (Debian: apt-get install wrk) and py-spy (PyPI), both outside the project's deps.
"""

from __future__ import annotations

import argparse
import base64
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402
import psycopg  # noqa: E402

from bench.ingest import post_script, sample_event, segment_message, serve  # noqa: E402
from bench.servers import benchmark_servers  # noqa: E402
from pixelpipe.core import sites  # noqa: E402
from pixelpipe.core.events_log import ensure_partitions  # noqa: E402
from pixelpipe.process import free_port  # noqa: E402

# (stage, what a frame's "function (file)" text contains), first match wins, innermost frame first.
STAGES = [
    ("COPY", ("copy", "write_row", "_copy_rows")),
    ("commit wait / writer", ("writer.py", "psycopg")),
    ("parsing (JSON, translators)", ("load_json", "parse_events", "orjson", "sdks/", "decode_body",
                                     "parse_qsl", "unquote", "tracker_event", "json")),
    ("row building", ("event_row", "events.py")),
    ("admission and bounds", ("admission.py", "_admit", "ip_limited", "_site_limited", "stored_text_bytes",
                              "visitors.py", "retry_after", "dead_letter", "intake.py")),
    ("HTTP server (uvicorn, httptools, Starlette, asyncio)", ("uvicorn", "httptools", "http_limits",
                                                                "starlette", "asyncio", "selectors",
                                                                "http/", "cors.py", "app.py")),
]


TOP = 0


def stage_of(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):  # innermost first
        for stage, marks in STAGES:
            if any(mark in frame for mark in marks):
                return stage
    return "other (interpreter, GC, logging)"


def profile(pid: int, seconds: int, url: str, connections: int, script: str | None, out: Path) -> Counter:
    spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "250",
                            "--format", "raw", "--output", str(out), "--nonblocking"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", *(["-s", script] if script else []), url]
    result = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    if spy.wait(60) != 0:
        raise RuntimeError(spy.stderr.read().decode())
    stages: Counter = Counter()
    leaves: Counter = Counter()
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        stages[stage_of(stack)] += int(count)
        leaves[stack.split(";")[-1]] += int(count)
    if TOP:
        for leaf, count in leaves.most_common(TOP):
            print(f"    {count:6d} {leaf}")
    requests = int(result.split(" requests in")[0].split()[-1])
    stages["_requests"] = requests
    return stages


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--top", type=int, default=0, help="also print the N busiest functions")
    args = parser.parse_args()
    global TOP
    TOP = args.top
    with benchmark_servers() as servers, tempfile.TemporaryDirectory() as folder:
        url = servers["database_url"]
        with psycopg.connect(url, autocommit=True) as conn:
            ensure_partitions(conn)
            sites.save_site(conn, "bench-segment", create=True)
            write_key = sites.new_write_key(conn, "bench-segment")
        env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        port = free_port()
        # One worker, in the uvicorn process itself: the process py-spy samples is the one serving.
        collector = serve([sys.executable, "-m", "pixelpipe.cli", "collector", "--port", str(port),
                           "--workers", "1"], env, port)
        try:
            batch = post_script(Path(folder) / "batch.lua", orjson.dumps(
                {"eventType": "batch", "events": [sample_event(n) for n in range(100)]}),
                {"Content-Type": "application/json"})
            auth = base64.b64encode(f"{write_key}:".encode()).decode()
            segment = post_script(Path(folder) / "segment.lua", orjson.dumps(
                {"batch": [segment_message(n) for n in range(100)]}),
                {"Content-Type": "application/json", "Authorization": f"Basic {auth}"})
            kinds = [("pixel", f"http://127.0.0.1:{port}/i?eventType=pageview&siteId=bench&url=https%3A%2F%2Fshop.example.com%2F", None),
                     ("/collect x100", f"http://127.0.0.1:{port}/collect", batch),
                     ("/v1/batch x100", f"http://127.0.0.1:{port}/v1/batch", segment)]
            for name, target, script in kinds:
                stages = profile(collector.pid, args.seconds, target, args.connections, script,
                                 Path(folder) / "profile.txt")
                requests = stages.pop("_requests")
                total = sum(stages.values())
                # Samples at 250 Hz: 4 ms of CPU each (the worker is CPU-bound under this load).
                per_request_us = total * 4000 / max(requests, 1)
                print(f"{name}: {requests / args.seconds:,.0f} req/s, {per_request_us:,.0f} µs of sampled "
                      f"CPU per request ({total} samples)")
                for stage, count in stages.most_common():
                    print(f"  {stage:<55} {100 * count / total:5.1f}%  {count * 4000 / max(requests, 1):8.1f} µs")
        finally:
            collector.terminate()
            collector.wait(30)


if __name__ == "__main__":
    main()
