"""Pipeline fixtures: Dagster resources bound to this test's database and buckets."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
import warnings
from datetime import UTC, datetime, timedelta

import dagster as dg
import orjson
import psycopg
import pytest
from dagster_aws.s3 import S3Resource

from pipeline.resources import PipelineSettings, PostgresResource
from pixelpipe.core.events_log import EVENT_COLUMNS, copy_statement

warnings.filterwarnings("ignore", category=dg.PreviewWarning)
warnings.filterwarnings("ignore", category=dg.BetaWarning)


@pytest.fixture
def resources(database_url, s3_server, buckets):
    return {
        "postgres": PostgresResource(database_url=database_url),
        "s3": S3Resource(endpoint_url=s3_server.endpoint, aws_access_key_id=s3_server.access_key,
                         aws_secret_access_key=s3_server.secret_key, region_name="us-east-1"),
        "settings": PipelineSettings(client_bucket=buckets["client"], backup_bucket=buckets["backup"]),
    }


def closed_hour(hours_ago: int) -> datetime:
    """The start of a UTC hour that closed at least `hours_ago - 1` hours ago."""
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return now - timedelta(hours=hours_ago)


def partition_key(hour: datetime) -> str:
    return f"{hour:%Y-%m-%d-%H:%M}"


def seed_events(db: psycopg.Connection, hour: datetime, site: str, count: int,
                event_time: datetime | None = None, **extra) -> None:
    """Rows as the collector writes them, ingested (created_at) inside `hour`."""
    step = timedelta(seconds=3599) / max(count, 1)
    with db.cursor() as cur, cur.copy(copy_statement("events_log", (*EVENT_COLUMNS, "created_at"))) as copy:
        for i in range(count):
            created = hour + step * i
            raw = {"eventType": "pageview" if i % 3 else "click", "n": i, "siteId": site, **extra}
            copy.write_row((
                uuid.uuid4(), raw["eventType"], f"sess-{i % 5}", f"vis-{i % 7}" if i % 4 else None, site,
                event_time or created - timedelta(seconds=2), f"https://{site}.example/p/{i}",
                f"/p/{i}", "Mozilla/5.0 (test)", f"198.51.100.{i % 250}" if i % 6 else None,
                orjson.dumps(raw).decode(), "pixelpipe", created,
            ))


def materialize_export(resources, *, partition: str | None = None, start: str | None = None,
                       end: str | None = None, raise_on_error: bool = False):
    from pipeline.defs.export.assets import hourly_export
    from pipeline.defs.export.checks import hourly_export_checks
    from pipeline.defs.export.events_log import events_log

    tags = {}
    if start:
        tags = {"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end}
    return dg.materialize(
        [events_log, hourly_export, hourly_export_checks],
        partition_key=partition, tags=tags, resources=resources, raise_on_error=raise_on_error,
        selection=[hourly_export.key],
    )


def with_settings(resources: dict, **changes) -> dict:
    """The same resources with some PipelineSettings fields changed."""
    settings = resources["settings"]
    fields = {name: getattr(settings, name) for name in type(settings).model_fields}
    return {**resources, "settings": type(settings)(**{**fields, **changes})}


def verify(s3_server, *args, env=None):
    """`pixelpipe verify` as a client runs it: S3 endpoint and read-only keys, no database, no stack."""
    clean = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PIXELPIPE_HOME")}
    return subprocess.run(
        [sys.executable, "-m", "pixelpipe.cli", "verify", *args], capture_output=True, text=True, timeout=120,
        env={**clean, "PIXELPIPE_HOME": "/nonexistent", "PIXELPIPE_S3_ENDPOINT": s3_server.endpoint,
             "AWS_ACCESS_KEY_ID": s3_server.reader_access_key,
             "AWS_SECRET_ACCESS_KEY": s3_server.reader_secret_key, **(env or {})})
