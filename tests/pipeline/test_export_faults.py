"""The hourly export under faults: S3 cut off, PostgreSQL restarted, the run's process killed,
each half-way through an hour. Afterwards nothing is recorded or verified that is not in both
buckets, and a re-run leaves exactly the hour's rows, once, with no stray object."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from dagster_aws.s3 import S3Resource

from pipeline.defs.retention.assets import apply_retention
from tests.pipeline.conftest import (
    closed_hour,
    materialize_export,
    partition_key,
    seed_events,
    with_settings,
)
from tests.pipeline.test_export import check_results, db_rows, objects, read_rows

pytestmark = pytest.mark.faults
REPO = Path(__file__).resolve().parents[2]


class CuttableProxy:
    """A TCP proxy in front of a real server that, once `cut_after` bytes went upstream, cuts
    every connection and refuses new ones: the server becomes unreachable mid-conversation."""

    def __init__(self, upstream_port: int, cut_after: int):
        self.upstream_port = upstream_port
        self.cut_after = cut_after
        self.sent = 0
        self.severed = threading.Event()
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.severed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self.lock:
                self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, upstream: bool) -> None:
        try:
            while data := source.recv(65536):
                if upstream:
                    with self.lock:
                        self.sent += len(data)
                    if self.sent > self.cut_after:
                        self.sever()
                        return
                target.sendall(data)
        except OSError:
            pass

    def sever(self) -> None:
        self.severed.set()
        self.listener.close()
        with self.lock:
            for sock in self.sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()


def seed_hour(db, hour, sites=8, rows=300):
    for n in range(sites):
        seed_events(db, hour, f"site-{n}", rows)


def wait_for_objects(s3, bucket, count: int, prefix_filter=lambda key: True, timeout: float = 60) -> None:
    """Until `count` matching objects exist (the event the fault is timed on)."""
    deadline = time.monotonic() + timeout
    while len([k for k in objects(s3, bucket) if prefix_filter(k)]) < count:
        assert time.monotonic() < deadline, "the export never got that far"
        time.sleep(0.02)


def assert_rerun_is_exact(resources, db, s3, buckets, hour, rows_per_file):
    result = materialize_export(with_settings(resources, rows_per_file=rows_per_file), partition=partition_key(hour))
    assert result.success and all(check_results(result).values())
    expected = db_rows(db, hour, hour + timedelta(hours=1))
    for bucket in (buckets["client"], buckets["backup"]):
        keys = objects(s3, bucket)
        assert read_rows(s3, bucket, keys) == expected  # every row once, no stray object
        manifest = {k for (ks,) in db.execute("SELECT client_keys FROM export_manifest") for k in ks}
        assert set(keys) == manifest


def test_s3_cut_off_during_an_export(resources, db, s3, s3_server, buckets):
    hour = closed_hour(3)
    seed_hour(db, hour)
    proxy = CuttableProxy(s3_server.port, cut_after=60_000)
    flaky = {**resources, "s3": S3Resource(endpoint_url=proxy.url, aws_access_key_id=s3_server.access_key,
                                           aws_secret_access_key=s3_server.secret_key, region_name="us-east-1",
                                           max_attempts=2)}
    result = materialize_export(with_settings(flaky, rows_per_file=40), partition=partition_key(hour))
    assert proxy.severed.is_set() and objects(s3, buckets["backup"])  # cut half-way, some files up
    assert not result.success
    message = str(result.failure_data_for_node("hourly_export").error)
    assert "S3" in message and "re-run the hour" in message and "Traceback" not in message
    assert db.execute("SELECT count(*) FROM export_hours").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM export_manifest").fetchone()[0] == 0
    assert_rerun_is_exact(resources, db, s3, buckets, hour, rows_per_file=40)


def test_postgres_restarted_during_an_export(resources, s3, buckets, own_postgres):
    from pipeline.resources import PostgresResource
    from pixelpipe.core.events_log import ensure_partitions

    server, url = own_postgres
    hour = closed_hour(3)
    with psycopg.connect(url, autocommit=True) as db:
        ensure_partitions(db, now=datetime.now(UTC), hours_back=4)
        seed_hour(db, hour, sites=10, rows=400)
    resources = {**resources, "postgres": PostgresResource(database_url=url)}
    result = {}
    run = threading.Thread(target=lambda: result.update(run=materialize_export(
        with_settings(resources, rows_per_file=20), partition=partition_key(hour))))
    run.start()
    wait_for_objects(s3, buckets["backup"], 3)
    server.stop()
    server.start()
    run.join(120)
    assert not result["run"].success
    message = str(result["run"].failure_data_for_node("hourly_export").error)
    assert "PostgreSQL" in message and "re-run the hour" in message
    with psycopg.connect(url, autocommit=True) as db:
        assert db.execute("SELECT count(*) FROM export_hours").fetchone()[0] == 0
        assert_rerun_is_exact(resources, db, s3, buckets, hour, rows_per_file=20)


RUN_EXPORT = """
import sys
import dagster as dg
from dagster_aws.s3 import S3Resource
from pipeline.defs.export.events_log import events_log
from pipeline.defs.export.assets import hourly_export
from pipeline.defs.export.checks import hourly_export_checks
from pipeline.resources import PipelineSettings, PostgresResource
url, endpoint, key, secret, client, backup, partition, rows_per_file = sys.argv[1:]
dg.materialize([events_log, hourly_export, hourly_export_checks], partition_key=partition,
               selection=[hourly_export.key], resources={
    "postgres": PostgresResource(database_url=url),
    "s3": S3Resource(endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
                     region_name="us-east-1"),
    "settings": PipelineSettings(client_bucket=client, backup_bucket=backup, rows_per_file=int(rows_per_file))})
"""


def test_export_process_killed_half_way_through_uploading(resources, database_url, db, s3, s3_server, buckets):
    hour = closed_hour(3)
    seed_hour(db, hour, sites=6, rows=400)
    assert all(check_results(materialize_export(resources, partition=partition_key(hour))).values())
    # A re-export with smaller files (new keys) is SIGKILLed while it uploads.
    process = subprocess.Popen(
        [sys.executable, "-c", RUN_EXPORT, database_url, s3_server.endpoint, s3_server.access_key,
         s3_server.secret_key, buckets["client"], buckets["backup"], partition_key(hour), "9"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_objects(s3, buckets["backup"], 6, lambda key: not key.endswith("part-00000.parquet"))
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(30)
    # The old manifest no longer matches the objects, and nothing says otherwise.
    assert db.execute("SELECT verified_at FROM export_hours").fetchone()[0] is None
    retention = apply_retention(db, datetime.now(UTC) + timedelta(days=3), 24)
    assert not [v for v in retention if v.purged]
    assert_rerun_is_exact(resources, db, s3, buckets, hour, rows_per_file=9)
