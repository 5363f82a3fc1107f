"""Valid pixel traffic under a hostile flood, with its baseline measured in the same run.

  alone      valid pixel GETs at a fixed rate (default 2,000 req/s) from 256 loopback addresses
             (visitors: about 8 events/s each, under the per-IP limit)
  flooded    the same valid traffic while 64 hostile connections send as fast as they are
             answered: 16 from fixed addresses send batches past the per-IP rate; 48 act as a
             botnet, every request from a new address (so the per-IP limit never helps), sending
             oversized headers, gzip bombs, poison rows, a stream of new site ids and envelopes
             whose url would be copied into every row
             sdk floods: 16 more fixed addresses post 1 MB-inflating gzip batches to the SDK routes
             (/v1/batch, /batch/, /e/, Snowplow tp2) past the per-IP rate (refused before the body)
             unknown-key storms: botnet requests with a new made-up write key each (Bearer on
             /collect, basic auth on /v1/batch): 401, and at most one reload of `sites` a second
             slowloris: 256 botnet connections sending their headers a byte a second (closed after
             PIXELPIPE_HEADER_TIMEOUT_SECONDS, then opened again)
  --attacks  which hostile requests (default: all of them, in turns); one kind alone puts all 64
             connections on it, each request from a new address:
               deep-nesting escapes  JSON nested past orjson's limit, then an unterminated string
                                     of escaped quotes (33 KB plain, or 100 bytes of gzip) to
                                     /collect and /v1/batch: quadratic before issue 20
               lz64                  61 KB lz64 PostHog batches (1,000 events) to /e/: decoded on
                                     the event loop before issue 20

Targets (docs/benchmarks.md): the valid traffic keeps >= 0.95x its rate alone, p99 < 50 ms and
no non-2xx; the database grows by at most 2 bytes per hostile byte received (the valid rows'
share, measured alone, is subtracted); the collector's RSS stays bounded.
The collector runs with its defaults plus PIXELPIPE_RATE_LIMIT_PER_IP=20 (off by default): an
address gets 20 events/s, a request costs one per event and one per 16 KiB it inflates to.
Usage: python bench/abuse.py [--seconds 10] [--rate 2000] [--workers 2] [--ip-limit 20]
                            [--attacks "deep-nesting escapes"|lz64]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import gzip
import itertools
import multiprocessing
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402
import psutil  # noqa: E402
import psycopg  # noqa: E402

from bench.ingest import serve, settle  # noqa: E402
from bench.servers import benchmark_servers  # noqa: E402
from pixelpipe.core.events_log import ensure_partitions  # noqa: E402
from pixelpipe.process import free_port  # noqa: E402

VALID_ADDRESSES = [f"127.1.{n // 200}.{n % 200 + 1}" for n in range(256)]
OVER_LIMIT_ADDRESSES = [f"127.2.0.{n}" for n in range(1, 17)]
SDK_FLOOD_ADDRESSES = [f"127.2.1.{n}" for n in range(1, 17)]
BOTNET_CONNECTIONS = 48
SLOWLORIS_CONNECTIONS = 256
# Kinds of hostile request (hostile_requests); each engineer's own numbers, to merge cleanly.
SDK_FLOOD, UNKNOWN_KEY = 10, 11
# The parser attacks (issue 20): kind numbers in hostile_requests.
PARSER_ATTACKS = {"deep-nesting escapes": (6, 7), "lz64": (8,)}
# The parts of the full mix, for --only: each keeps its connections and addresses as in the mix.
BOTNET_KINDS = {"headers": (0,), "gzip_bomb": (1,), "poison": (2,), "new_site": (3,), "amplifier": (5,),
                "deep_nesting": (6, 7), "lz64": (8,), "unknown_key": (UNKNOWN_KEY,)}
MIX_PARTS = ["over_rate", "sdk_flood", *BOTNET_KINDS, "slowloris"]


async def _exchange(reader, writer, request: bytes) -> int:
    """Send one request, read its response; the status (0 when the connection broke)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def _valid_traffic(port: int, rate: int, seconds: float) -> dict:
    """Open-ended schedule per connection: request k of a connection is due at start + k/rate_c.
    Latency is measured from when it was due, so a stall counts against us (no coordinated
    omission)."""
    per_connection = rate / len(VALID_ADDRESSES)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    start = time.perf_counter() + 0.2

    async def connection(address: str, offset: float) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(address, 0))
        for k in itertools.count():
            due = start + offset + k / per_connection
            if due - start > seconds:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            request = (b"GET /i?eventType=pageview&siteId=shop&url=https%%3A%%2F%%2Fshop.example.com%%2Fp%d "
                       b"HTTP/1.1\r\nHost: collector\r\nUser-Agent: Mozilla/5.0 (bench)\r\n\r\n" % k)
            try:
                status = await _exchange(reader, writer, request)
            except (OSError, asyncio.IncompleteReadError):
                status = 0
                reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(address, 0))
            latencies.append(time.perf_counter() - due)
            statuses[status] = statuses.get(status, 0) + 1
        writer.close()

    await asyncio.gather(*(connection(a, n / rate) for n, a in enumerate(VALID_ADDRESSES)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {"rps": len(latencies) / elapsed, "p50": latencies[len(latencies) // 2] * 1000,
            "p99": latencies[int(len(latencies) * 0.99)] * 1000,
            "non2xx": sum(n for s, n in statuses.items() if not 200 <= s < 300), "statuses": statuses}


@functools.cache
def _bodies() -> tuple[bytes, bytes, bytes, bytes]:
    """The costly bodies, compressed once per process: compressing them for each connection
    kept the hostile client's event loop busy for seconds at the start of the flood."""
    bomb = gzip.compress(b'{"eventType": "x", "siteId": "bomb", "pad": "' + b"a" * 4_000_000 + b'"}')
    amplifier = gzip.compress(orjson.dumps({"eventType": "batch", "siteId": "amp", "url": "https://a.example/"
                                            + "x" * 60_000, "events": [{"eventType": "e"}] * 1000}))
    big_batch = orjson.dumps([{"eventType": "click", "siteId": "flood", "n": n} for n in range(1000)])
    sdk_inflating = gzip.compress(orjson.dumps({"batch": [{"type": "track", "event": "e", "userId": "u",
                                                            "pad": "p" * 1000}] * 950}))
    return bomb, amplifier, big_batch, sdk_inflating


def hostile_requests(kinds: tuple[int, ...], start: int = 0):
    """Hostile requests of the given kinds, round robin from the `start`th, forever: (bytes, kind)."""
    bomb, amplifier, big_batch, sdk_inflating = _bodies()
    sdk_floods = itertools.cycle((("/v1/batch", b""), ("/batch/", b""),
                                  ("/e/", b""), ("/com.snowplowanalytics.snowplow/tp2", b"")))

    def post(body: bytes, extra: bytes = b"", path: bytes = b"/collect") -> bytes:
        return (b"POST %s HTTP/1.1\r\nHost: collector\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n%s\r\n" % (path, len(body), extra)) + body

    unterminated, unterminated_gzip, lz64_form = parser_attack_bodies()

    def sdk_post(path: bytes, body: bytes, content_type: bytes, extra: bytes = b"") -> bytes:
        return (b"POST %s HTTP/1.1\r\nHost: collector\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n"
                % (path, content_type, len(body), extra)) + body

    for n in itertools.count(start):
        kind = kinds[n % len(kinds)]
        if kind == 0:
            yield (b"GET /i?eventType=x&siteId=s HTTP/1.1\r\nHost: collector\r\n"
                   + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"h" * 1000) for i in range(24)) + b"\r\n"), "headers"
        elif kind == 1:
            yield post(bomb, b"Content-Encoding: gzip\r\n"), "gzip_bomb"
        elif kind == 2:
            yield post(b'[{"eventType": "x", "siteId": "victim\\n"}, {"eventType": "x", "siteId": "s", '
                       b'"timestamp": "2026-11-30T12:00:00+23:59"}, {"eventType": "x", "siteId": "s", "v": "a\\u0000"}]'), "poison"
        elif kind == 3:
            yield (b"GET /i?eventType=x&siteId=new-%d-%d HTTP/1.1\r\nHost: collector\r\n\r\n" % (os.getpid(), n)), "new_site"
        elif kind == 4:
            yield post(big_batch), "over_rate"
        elif kind == SDK_FLOOD:
            path, extra = next(sdk_floods)
            yield post(sdk_inflating, b"Content-Encoding: gzip\r\n" + extra, path.encode()), "sdk_flood"
        elif kind == UNKNOWN_KEY:
            key = b"ppk_%043d" % (os.getpid() * 10**9 + n)
            if n % 2:
                yield post(b'{"eventType": "x"}', b"Authorization: Bearer %s\r\n" % key), "unknown_key"
            else:
                yield post(b'{"batch": []}', b"Authorization: Basic %s\r\n" % base64.b64encode(key + b":"),
                           b"/v1/batch"), "unknown_key"
        elif kind == 6:
            yield post(unterminated), "deep_nesting_escapes"
        elif kind == 7:
            yield sdk_post(b"/v1/batch", unterminated_gzip, b"application/json",
                           b"Content-Encoding: gzip\r\n"), "deep_nesting_escapes_gzip"
        elif kind == 8:
            yield sdk_post(b"/e/?compression=lz64", lz64_form, b"application/x-www-form-urlencoded"), "lz64"
        else:
            yield post(amplifier, b"Content-Encoding: gzip\r\n"), "amplifier"


@functools.cache  # built once per process, not per connection
def parser_attack_bodies() -> tuple[bytes, bytes, bytes]:
    """Issue 20's parser attacks: nesting past orjson's limit then an unterminated string of
    escaped quotes (plain 33 KB; gzip: ~100 bytes inflating to 40 KB), and a 61 KB lz64 form
    of a 1,000-event PostHog batch under a key the collector does not know."""
    import json
    import random
    from urllib.parse import urlencode

    import lzstring

    unterminated = b"[" * 1025 + b'"' + b'\\"' * 16_000
    nested_gzip = gzip.compress(b"[" * 1025 + b'"' + b'\\"' * 20_000)
    rng = random.Random(20)
    events = [{"event": "$pageview", "uuid": f"0190c3a0-0000-7000-8000-{n:012x}",
               "properties": {"token": "phc_not_a_key", "distinct_id": f"d-{rng.getrandbits(40):x}",
                              "$current_url": f"https://shop.example.com/{n}?r={rng.getrandbits(64):x}"}}
              for n in range(1000)]
    form = urlencode({"data": lzstring.LZString().compressToBase64(json.dumps(events))}).encode()
    return unterminated, nested_gzip, form


def _hostile_process(port: int, seconds: float, niceness: int, results, attacks: str = "all",
                     only: frozenset[str] = frozenset(MIX_PARTS)) -> None:
    os.nice(niceness)

    async def run() -> dict:
        _bodies()  # before the clock starts
        sent = 0
        counts: dict[str, dict[int, int]] = {}
        deadline = time.perf_counter() + seconds

        async def connection(addresses, kinds: tuple[int, ...], fresh_address_each_time: bool,
                             start: int = 0) -> None:
            nonlocal sent
            requests = hostile_requests(kinds, start)  # connections start at different kinds
            reader = writer = None
            while time.perf_counter() < deadline:
                request, kind = next(requests)
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                                   local_addr=(next(addresses), 0))
                try:
                    status = await asyncio.wait_for(_exchange(reader, writer, request), 10)
                except (OSError, asyncio.IncompleteReadError, TimeoutError):
                    status = 0
                sent += len(request)
                counts.setdefault(kind, {})
                counts[kind][status] = counts[kind].get(status, 0) + 1
                # The server drops the rest of a refused oversized request; a bot moves on.
                if status in (0, 414, 431) or fresh_address_each_time:
                    writer.close()
                    writer = None
            if writer is not None:
                writer.close()

        async def slowloris(addresses) -> None:
            """Headers a byte a second, for as long as the server keeps the connection; counted
            by how it ended: the server's 408 or close, or still open when the run ended."""
            head = b"GET /i?eventType=x&siteId=s HTTP/1.1\r\nHost: collector\r\nX-Slow: " + b"s" * 10_000
            counts.setdefault("slowloris", {})
            while time.perf_counter() < deadline:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(next(addresses), 0))
                ended = "open at the end"
                try:
                    for byte in head:
                        if time.perf_counter() >= deadline:
                            break
                        writer.write(bytes((byte,)))
                        await writer.drain()
                        try:
                            answer = await asyncio.wait_for(reader.read(65536), 1.0)
                        except TimeoutError:
                            continue
                        ended = "answered 408" if answer.startswith(b"HTTP/1.1 408") else "closed"
                        break
                except (OSError, asyncio.IncompleteReadError):
                    ended = "closed"
                finally:
                    writer.close()
                counts["slowloris"][ended] = counts["slowloris"].get(ended, 0) + 1

        botnet = (f"127.3.{n // 250}.{n % 250 + 1}" for n in itertools.cycle(range(60_000)))
        if attacks in PARSER_ATTACKS:  # one kind alone, on every hostile connection
            await asyncio.gather(*(connection(botnet, PARSER_ATTACKS[attacks], True)
                                   for _ in range(len(OVER_LIMIT_ADDRESSES) + BOTNET_CONNECTIONS)))
        else:
            botnet_kinds = tuple(k for name, kinds in BOTNET_KINDS.items() if name in only for k in kinds)
            await asyncio.gather(
                *(connection(itertools.repeat(a), (4,), False)
                  for a in OVER_LIMIT_ADDRESSES if "over_rate" in only),
                *(connection(itertools.repeat(a), (SDK_FLOOD,), False)
                  for a in SDK_FLOOD_ADDRESSES if "sdk_flood" in only),
                *(connection(botnet, botnet_kinds, True, n)
                  for n in range(BOTNET_CONNECTIONS if botnet_kinds else 0)),
                *(slowloris(botnet) for _ in range(SLOWLORIS_CONNECTIONS if "slowloris" in only else 0)))
        return {"bytes": sent, "counts": counts}

    results.put(asyncio.run(run()))


def database_bytes(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]


def valid_rows(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM events_log WHERE site_id = 'shop'").fetchone()[0]


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
        except psutil.NoSuchProcess:
            pass
    return total


def tree(process: psutil.Process) -> list[psutil.Process]:
    return [process, *process.children(recursive=True)]


def postgres_processes() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres"]


def collector_rss_mb(process: psutil.Process) -> float:
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ip-limit", type=float, default=20, help="PIXELPIPE_RATE_LIMIT_PER_IP")
    parser.add_argument("--attacker-nice", type=int, default=19,
                        help="CPU priority of the hostile client (19: it gets only what we leave, as an "
                        "attacker on another machine would; 0: it competes with us for the 2 cores)")
    parser.add_argument("--attacks", default="all", choices=["all", *PARSER_ATTACKS],
                        help="the hostile requests: all kinds in turns, or one parser attack alone")
    parser.add_argument("--only", default=",".join(MIX_PARTS),
                        help="with --attacks all: the parts of the mix to send, comma-separated, each on its "
                        "own connections as in the full mix (to find which one costs the valid traffic): "
                        + ", ".join(MIX_PARTS))
    args = parser.parse_args()
    only = frozenset(part.strip() for part in args.only.split(",") if part.strip())
    if unknown := only - set(MIX_PARTS):
        parser.error(f"--only: no part named {', '.join(sorted(unknown))}; the parts are {', '.join(MIX_PARTS)}")
    with benchmark_servers() as servers:
        url = servers["database_url"]
        with psycopg.connect(url, autocommit=True) as conn:
            ensure_partitions(conn)
            conn.execute("INSERT INTO sites (site_id) VALUES ('shop')")
        env = {**os.environ, "DATABASE_URL": url, "PIXELPIPE_RATE_LIMIT_PER_IP": str(args.ip_limit),
               "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        port = free_port()
        collector = serve([sys.executable, "-m", "pixelpipe.cli", "collector", "--port", str(port),
                           "--workers", str(args.workers)], env, port)
        watched = psutil.Process(collector.pid)
        try:
            asyncio.run(_valid_traffic(port, 500, 1))  # warm up
            settle(url)
            size, rows = database_bytes(url), valid_rows(url)
            alone = asyncio.run(_valid_traffic(port, args.rate, args.seconds))
            settle(url)
            valid_row_bytes = (database_bytes(url) - size) / max(1, valid_rows(url) - rows)
            rss_before = collector_rss_mb(watched)

            size, rows = database_bytes(url), valid_rows(url)
            results = multiprocessing.Queue()
            hostile = multiprocessing.Process(target=_hostile_process, args=(port, args.seconds + 0.4, args.attacker_nice, results,
                                                                        args.attacks, only))
            hostile.start()
            watched_trees = {"collector": tree(watched), "postgres": postgres_processes(),
                             "valid client": [psutil.Process()], "hostile client": [psutil.Process(hostile.pid)]}
            cpu_before = {name: cpu_seconds(procs) for name, procs in watched_trees.items()}
            rss_peak = rss_before
            sampler_stop = time.perf_counter() + args.seconds + 1

            async def flooded_with_sampling():
                async def sample():
                    nonlocal rss_peak
                    while time.perf_counter() < sampler_stop:
                        rss_peak = max(rss_peak, collector_rss_mb(watched))
                        await asyncio.sleep(0.5)
                measured, _ = await asyncio.gather(_valid_traffic(port, args.rate, args.seconds), sample())
                return measured

            flooded = asyncio.run(flooded_with_sampling())
            cpu = {name: cpu_seconds(procs) - cpu_before[name] for name, procs in watched_trees.items()}
            flood = results.get(timeout=60)
            hostile.join(30)
            time.sleep(1)  # the collector's queue drains
            settle(url)
            growth = database_bytes(url) - size
            valid_share = (valid_rows(url) - rows) * valid_row_bytes
            rss_after = collector_rss_mb(watched)
        finally:
            collector.terminate()
            collector.wait(30)

    hostile_growth = max(0.0, growth - valid_share)
    print(f"valid alone   : {alone['rps']:>8,.0f} req/s  p50 {alone['p50']:.1f} ms  p99 {alone['p99']:.1f} ms  "
          f"non-2xx {alone['non2xx']}")
    print(f"valid flooded : {flooded['rps']:>8,.0f} req/s  p50 {flooded['p50']:.1f} ms  p99 {flooded['p99']:.1f} ms  "
          f"non-2xx {flooded['non2xx']}")
    print(f"hostile       : {flood['bytes'] / 2**20:,.1f} MiB sent over {16 + 16 + BOTNET_CONNECTIONS} "
          f"connections and {SLOWLORIS_CONNECTIONS} slow ones; answers per kind: "
          + "; ".join(f"{kind} {dict(sorted(c.items()))}" for kind, c in sorted(flood["counts"].items())))
    print(f"database      : grew {growth / 2**20:,.2f} MiB, of which valid rows {valid_share / 2**20:,.2f} MiB "
          f"({valid_row_bytes:,.0f} B/row); hostile: {hostile_growth / max(1, flood['bytes']):.3f} bytes per "
          "hostile byte (target <= 2)")
    print(f"collector RSS : {rss_before:,.0f} MB before the flood, peak {rss_peak:,.0f} MB, {rss_after:,.0f} MB after "
          f"({args.workers} workers)")
    print("CPU seconds during the flood (2 cores): " + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()))
    print(f"valid traffic under the flood: {flooded['rps'] / alone['rps']:.2f}x its rate alone (target >= 0.95), "
          f"p99 {flooded['p99']:.1f} ms (target < 50), non-2xx {flooded['non2xx']} (target 0)")


if __name__ == "__main__":
    main()
