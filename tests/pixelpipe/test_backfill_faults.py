"""A 12-hour backfill submitted with `pixelpipe backfill` to a real stack, whose Dagster daemon is
SIGKILLed half-way and started again: the backfill completes, every hour holds exactly its rows
in both buckets, and every check passes."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest

from pixelpipe.backfill import backfill_status
from pixelpipe.core.events_log import ensure_partitions
from pixelpipe.core.s3 import s3_client
from pixelpipe.core.settings import Settings
from pixelpipe.process import free_port
from pixelpipe.stack import Stack
from tests.pipeline.conftest import seed_events

pytestmark = [pytest.mark.faults, pytest.mark.slow]
HOURS = 12
REPO = Path(__file__).resolve().parents[2]


def exported_ids(s3, bucket: str) -> list[tuple[str, int]]:
    ids = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            if not item["Key"].endswith(".parquet"):
                continue  # the hours' receipts
            table = pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()),
                                  columns=["site_id", "id"])
            ids += list(zip(table.column("site_id").to_pylist(), table.column("id").to_pylist(), strict=True))
    return ids


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_daemon_killed_during_a_12_hour_backfill(state_dir, monkeypatch):
    home = state_dir / "backfill-home"
    for name, value in (("PIXELPIPE_BACKFILL_HOURS_PER_RUN", "3"), ("PIXELPIPE_HOME", str(home)),
                        *((f"PIXELPIPE_{port}_PORT", str(free_port()))
                          for port in ("COLLECTOR", "DAGSTER", "POSTGRES", "S3"))):
        monkeypatch.setenv(name, value)  # the stack's child processes read the environment
    for name in ("DATABASE_URL", "PIXELPIPE_S3_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings.from_env()
    stack = Stack(settings)
    orphans = []
    try:
        stack.start()
        url = stack.env["DATABASE_URL"]
        now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        first, last = now - timedelta(hours=HOURS + 1), now - timedelta(hours=2)
        with psycopg.connect(url, autocommit=True) as db:
            ensure_partitions(db, now=now, hours_back=HOURS + 2)
            for n in range(HOURS):
                for site in ("alpha", "beta"):
                    seed_events(db, first + timedelta(hours=n), site, 50 + n)
        submitted = subprocess.run(
            [sys.executable, "-m", "pixelpipe.cli", "backfill", "--from", f"{first:%Y-%m-%d-%H:%M}",
             "--to", f"{last:%Y-%m-%d-%H:%M}"], env={**stack.env, "PIXELPIPE_DAGSTER_PORT": str(settings.dagster_port)},
            capture_output=True, text=True, timeout=120, cwd=REPO)
        assert submitted.returncode == 0, submitted.stderr
        backfill_id = submitted.stdout.strip()
        assert "runs of at most 3 hours" in submitted.stderr

        def exported() -> int:
            with psycopg.connect(url) as db:
                return db.execute("SELECT count(*) FROM export_hours WHERE ingest_hour BETWEEN %s AND %s",
                                  (first, last)).fetchone()[0]

        wait_until(lambda: exported() >= 1, 180, "the first hour of the backfill")
        daemon = stack.services[2]
        assert daemon.name == "Dagster daemon"
        orphans.append(daemon.process.pid)  # its process group: run workers it started
        os.kill(daemon.process.pid, signal.SIGKILL)
        daemon.process.wait(10)
        assert exported() < HOURS  # killed half-way
        daemon.start()
        wait_until(lambda: backfill_status(stack.dagster_url, backfill_id) in ("COMPLETED", "COMPLETED_SUCCESS",
                                                                                 "COMPLETED_FAILED", "FAILED"),
                   300, "the backfill to finish")
        assert backfill_status(stack.dagster_url, backfill_id) in ("COMPLETED", "COMPLETED_SUCCESS")

        with psycopg.connect(url) as db:
            ledger = db.execute("SELECT count(*), count(verified_at) FROM export_hours "
                                "WHERE ingest_hour BETWEEN %s AND %s", (first, last)).fetchone()
            expected = sorted(db.execute(
                "SELECT site_id, id FROM events_log WHERE created_at >= %s AND created_at < %s",
                (first, last + timedelta(hours=1))).fetchall())
        assert ledger == (HOURS, HOURS)  # every hour exported, and both checks passed
        keys = json.loads((home / "s3" / "credentials.json").read_text())
        s3 = s3_client(stack.env["PIXELPIPE_S3_ENDPOINT"], keys["admin_access_key"], keys["admin_secret_key"], "us-east-1")
        for bucket in (settings.client_bucket, settings.backup_bucket):
            assert sorted(exported_ids(s3, bucket)) == expected  # each row once: no duplicate, no stray
    finally:
        stack.stop()
        for pgid in orphans:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
