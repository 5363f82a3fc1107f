"""Every setting pixelpipe reads from the environment, each defined once: its variable, default,
parser (from its type) and one line of doc, in the field below. `Settings.from_env()` reads them
all; the Dagster resources take their defaults from here; tests/pixelpipe/test_settings.py checks
the table in docs/operations.md against these fields.

The names are a contract with operators, the docs and docker-compose: add settings, never rename.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from decimal import Decimal, InvalidOperation
from pathlib import Path

from pixelpipe.core.errors import PixelpipeError


def setting(env: str, default, doc: str, choices: tuple[str, ...] = ()):
    """A Settings field: read from `env`, `default` when unset or empty."""
    return field(default=default, metadata={"env": env, "doc": doc, "choices": choices})


def _int(env: str, raw: str, example) -> int:
    try:
        return int(raw)
    except ValueError:
        raise PixelpipeError(f"{env}={raw!r} is not a whole number; set it to one, e.g. {example}.") from None


def _float(env: str, raw: str, example) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise PixelpipeError(f"{env}={raw!r} is not a number >= 0; set it to one, e.g. 100 (0 = off).")
    return value


def _bool(env: str, raw: str, example) -> bool:
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise PixelpipeError(f"{env}={raw!r} is not a boolean; set it to true or false.")


def _decimal(env: str, raw: str, example) -> Decimal:
    try:
        return Decimal(raw)
    except (InvalidOperation, ValueError):
        raise PixelpipeError(f"{env}={raw!r} is not a decimal number; e.g. {example}.") from None


_PARSERS = {
    "str": lambda env, raw, example: raw,
    "int": _int,
    "float": _float,
    "bool": _bool,
    "Decimal": _decimal,
    "Path": lambda env, raw, example: Path(raw),
    "tuple[str, ...]": lambda env, raw, example: tuple(p.strip() for p in raw.split(",") if p.strip()),
}


@dataclass(frozen=True)
class Settings:
    """A snapshot of the environment. Unset `database_url`/`s3_endpoint` mean: embedded servers."""

    # Where the data lives.
    database_url: str = setting("DATABASE_URL", "", "any PostgreSQL >= 15; unset: the embedded one")
    home: Path = setting("PIXELPIPE_HOME", Path(".pixelpipe"), "local state: embedded servers' data, logs, DAGSTER_HOME")
    s3_endpoint: str = setting("PIXELPIPE_S3_ENDPOINT", "", "S3 endpoint URL; unset: the embedded SeaweedFS")
    client_bucket: str = setting("PIXELPIPE_CLIENT_BUCKET", "pixelpipe-clients", "bucket of sites without their own")
    backup_bucket: str = setting("PIXELPIPE_BACKUP_BUCKET", "pixelpipe-backup", "every exported file and statement")
    aws_access_key_id: str = setting("AWS_ACCESS_KEY_ID", "", "S3 access key; unset: boto3's usual chain")
    aws_secret_access_key: str = setting("AWS_SECRET_ACCESS_KEY", "", "S3 secret key")
    aws_region: str = setting("AWS_REGION", "us-east-1", "S3 region")
    # Embedded servers (used only when the URLs above are unset).
    postgres_port: int = setting("PIXELPIPE_POSTGRES_PORT", 15432, "port of the embedded PostgreSQL")
    s3_port: int = setting("PIXELPIPE_S3_PORT", 8333, "S3 port of the embedded SeaweedFS")
    # Collector.
    collector_host: str = setting("PIXELPIPE_COLLECTOR_HOST", "127.0.0.1", "collector bind address")
    collector_port: int = setting("PIXELPIPE_COLLECTOR_PORT", 8000, "collector port")
    collector_workers: int = setting("PIXELPIPE_COLLECTOR_WORKERS", 1, "uvicorn worker processes")
    max_body_bytes: int = setting("PIXELPIPE_MAX_BODY_BYTES", 1024 * 1024, "body cap, also inflated")
    max_batch_events: int = setting("PIXELPIPE_MAX_BATCH_EVENTS", 1000, "events per request")
    flush_interval_ms: int = setting("PIXELPIPE_FLUSH_INTERVAL_MS", 5, "gathering while a commit is in flight")
    flush_max_rows: int = setting("PIXELPIPE_FLUSH_MAX_ROWS", 5000, "rows per transaction at most")
    flush_connections: int = setting("PIXELPIPE_FLUSH_CONNECTIONS", 2, "database connections per worker")
    queue_max_rows: int = setting("PIXELPIPE_QUEUE_MAX_ROWS", 100_000, "rows waiting per worker before 503")
    dead_letter_body_cap: int = setting("PIXELPIPE_DEAD_LETTER_BODY_CAP", 64 * 1024, "bytes of a rejected body kept")
    cors_origins: tuple[str, ...] = setting("PIXELPIPE_CORS_ORIGINS", ("*",), "allowed origins, comma-separated")
    trusted_proxies: tuple[str, ...] = setting("PIXELPIPE_TRUSTED_PROXIES", (), "proxies whose X-Forwarded-For counts")
    anonymize_ip: bool = setting("PIXELPIPE_ANONYMIZE_IP", False, "store truncated addresses only")
    drop_bots: bool = setting("PIXELPIPE_DROP_BOTS", True, "dead-letter events from crawlers' user agents")
    site_policy: str = setting("PIXELPIPE_SITE_POLICY", "open", "which sites may send", ("open", "allowlist"))
    new_sites_per_hour: int = setting("PIXELPIPE_NEW_SITES_PER_HOUR", 1000, "unseen sites admitted per hour")
    rate_limit_per_ip: float = setting("PIXELPIPE_RATE_LIMIT_PER_IP", 0.0, "events/s per address and worker; 0: off")
    rate_limit_per_site: float = setting("PIXELPIPE_RATE_LIMIT_PER_SITE", 0.0, "events/s per site and worker; 0: off")
    header_timeout_seconds: float = setting("PIXELPIPE_HEADER_TIMEOUT_SECONDS", 10.0,
                                            "a request's headers must arrive within this; 0: no limit")
    body_timeout_seconds: float = setting("PIXELPIPE_BODY_TIMEOUT_SECONDS", 30.0,
                                          "a request's body must arrive within this after its headers; 0: no limit")
    keepalive_timeout_seconds: float = setting("PIXELPIPE_KEEPALIVE_TIMEOUT_SECONDS", 5.0,
                                               "an idle keep-alive connection is closed after this")
    admin_port: int = setting("PIXELPIPE_ADMIN_PORT", 0, "loopback port for /metrics and /readyz; 0: off")
    # Dagster.
    dagster_port: int = setting("PIXELPIPE_DAGSTER_PORT", 3000, "Dagster webserver port")
    partitions_start: str = setting("PIXELPIPE_PARTITIONS_START", "", "first hourly partition; unset: where the data starts")
    export_grace_minutes: int = setting("PIXELPIPE_EXPORT_GRACE_MINUTES", 5, "wait after an hour ends")
    retention_hours: int = setting("PIXELPIPE_RETENTION_HOURS", 24, "exported hours kept in PostgreSQL")
    rejected_retention_days: int = setting("PIXELPIPE_REJECTED_RETENTION_DAYS", 7, "dead-letter rows kept")
    backfill_hours_per_run: int = setting("PIXELPIPE_BACKFILL_HOURS_PER_RUN", 24, "hours per backfill run")
    billing_rate_per_1000: Decimal = setting("PIXELPIPE_BILLING_RATE_PER_1000", Decimal("0.01"), "USD per 1,000 events")
    alert_webhook_url: str = setting("PIXELPIPE_ALERT_WEBHOOK_URL", "", "failed runs are POSTed here")

    def __post_init__(self) -> None:
        object.__setattr__(self, "home", Path(self.home).expanduser().resolve())

    @classmethod
    def from_env(cls) -> Settings:
        values = {}
        for item in fields(cls):
            env, choices = item.metadata["env"], item.metadata["choices"]
            raw = os.environ.get(env, "").strip()
            if not raw:
                continue
            if choices and raw.lower() not in choices:
                raise PixelpipeError(f"{env}={raw!r} is not one of {', '.join(choices)}.")
            values[item.name] = _PARSERS[item.type](env, raw.lower() if choices else raw, item.default)
        return cls(**values)
