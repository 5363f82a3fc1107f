"""Every setting pixelpipe reads from the environment, with its default, in one place.

The names are a contract with operators, the docs and docker-compose: add settings, never rename.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from pixelpipe.core.errors import PixelpipeError


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise PixelpipeError(f"{name}={raw!r} is not a whole number; set it to one, e.g. {default}.") from None


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise PixelpipeError(f"{name}={raw!r} is not a boolean; set it to true or false.")


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise PixelpipeError(f"{name}={raw!r} is not a number >= 0; set it to one, e.g. 100 (0 = off).")
    return value


def _choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = _str(name, default).lower()
    if raw not in choices:
        raise PixelpipeError(f"{name}={raw!r} is not one of {', '.join(choices)}.")
    return raw


def _str(name: str, default: str = "") -> str:
    return os.environ.get(name, "").strip() or default


def _list(name: str, default: str = "") -> tuple[str, ...]:
    return tuple(part.strip() for part in _str(name, default).split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    """A snapshot of the environment. Unset `database_url`/`s3_endpoint` mean: embedded servers."""

    database_url: str = ""
    home: Path = Path(".pixelpipe")
    s3_endpoint: str = ""
    client_bucket: str = "pixelpipe-clients"
    backup_bucket: str = "pixelpipe-backup"
    aws_access_key_id: str = ""
    aws_secret_access_key: str = ""
    aws_region: str = "us-east-1"
    # Embedded servers (used only when the URLs above are unset).
    postgres_port: int = 15432
    s3_port: int = 8333
    # Collector.
    collector_host: str = "127.0.0.1"
    collector_port: int = 8000
    collector_workers: int = 1
    max_body_bytes: int = 1024 * 1024
    max_batch_events: int = 1000
    flush_interval_ms: int = 5
    flush_max_rows: int = 5000
    flush_connections: int = 2
    queue_max_rows: int = 100_000
    dead_letter_body_cap: int = 64 * 1024
    cors_origins: tuple[str, ...] = ("*",)
    trusted_proxies: tuple[str, ...] = ()
    anonymize_ip: bool = False
    # Tenant admission and abuse limits (docs/security.md).
    site_policy: str = "open"
    new_sites_per_hour: int = 1000
    rate_limit_per_ip: float = 0.0
    rate_limit_per_site: float = 0.0
    admin_port: int = 0
    rejected_retention_days: int = 7
    # Dagster.
    dagster_port: int = 3000
    export_grace_minutes: int = 5
    retention_hours: int = 24
    backfill_hours_per_run: int = 24
    billing_rate_per_1000: Decimal = Decimal("0.01")
    alert_webhook_url: str = ""

    @classmethod
    def from_env(cls) -> Settings:
        rate = _str("PIXELPIPE_BILLING_RATE_PER_1000", "0.01")
        try:
            billing_rate = Decimal(rate)
        except ArithmeticError:
            raise PixelpipeError(
                f"PIXELPIPE_BILLING_RATE_PER_1000={rate!r} is not a decimal number; e.g. 0.01."
            ) from None
        return cls(
            database_url=_str("DATABASE_URL"),
            home=Path(_str("PIXELPIPE_HOME", ".pixelpipe")).expanduser().resolve(),
            s3_endpoint=_str("PIXELPIPE_S3_ENDPOINT"),
            client_bucket=_str("PIXELPIPE_CLIENT_BUCKET", "pixelpipe-clients"),
            backup_bucket=_str("PIXELPIPE_BACKUP_BUCKET", "pixelpipe-backup"),
            aws_access_key_id=_str("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=_str("AWS_SECRET_ACCESS_KEY"),
            aws_region=_str("AWS_REGION", "us-east-1"),
            postgres_port=_int("PIXELPIPE_POSTGRES_PORT", 15432),
            s3_port=_int("PIXELPIPE_S3_PORT", 8333),
            collector_host=_str("PIXELPIPE_COLLECTOR_HOST", "127.0.0.1"),
            collector_port=_int("PIXELPIPE_COLLECTOR_PORT", 8000),
            collector_workers=_int("PIXELPIPE_COLLECTOR_WORKERS", 1),
            max_body_bytes=_int("PIXELPIPE_MAX_BODY_BYTES", 1024 * 1024),
            max_batch_events=_int("PIXELPIPE_MAX_BATCH_EVENTS", 1000),
            flush_interval_ms=_int("PIXELPIPE_FLUSH_INTERVAL_MS", 5),
            flush_max_rows=_int("PIXELPIPE_FLUSH_MAX_ROWS", 5000),
            flush_connections=_int("PIXELPIPE_FLUSH_CONNECTIONS", 2),
            queue_max_rows=_int("PIXELPIPE_QUEUE_MAX_ROWS", 100_000),
            dead_letter_body_cap=_int("PIXELPIPE_DEAD_LETTER_BODY_CAP", 64 * 1024),
            cors_origins=_list("PIXELPIPE_CORS_ORIGINS", "*"),
            trusted_proxies=_list("PIXELPIPE_TRUSTED_PROXIES"),
            anonymize_ip=_bool("PIXELPIPE_ANONYMIZE_IP", False),
            site_policy=_choice("PIXELPIPE_SITE_POLICY", "open", ("open", "allowlist")),
            new_sites_per_hour=_int("PIXELPIPE_NEW_SITES_PER_HOUR", 1000),
            rate_limit_per_ip=_float("PIXELPIPE_RATE_LIMIT_PER_IP", 0.0),
            rate_limit_per_site=_float("PIXELPIPE_RATE_LIMIT_PER_SITE", 0.0),
            admin_port=_int("PIXELPIPE_ADMIN_PORT", 0),
            rejected_retention_days=_int("PIXELPIPE_REJECTED_RETENTION_DAYS", 7),
            dagster_port=_int("PIXELPIPE_DAGSTER_PORT", 3000),
            export_grace_minutes=_int("PIXELPIPE_EXPORT_GRACE_MINUTES", 5),
            retention_hours=_int("PIXELPIPE_RETENTION_HOURS", 24),
            backfill_hours_per_run=_int("PIXELPIPE_BACKFILL_HOURS_PER_RUN", 24),
            billing_rate_per_1000=billing_rate,
            alert_webhook_url=_str("PIXELPIPE_ALERT_WEBHOOK_URL"),
        )
