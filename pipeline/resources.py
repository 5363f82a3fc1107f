"""One ConfigurableResource per external system, configured from the environment."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg
from dagster_aws.s3 import S3Resource

from pipeline.export_settings import ROWS_PER_FILE, ExportSettings
from pixelpipe.core.database import resolve_database_url
from pixelpipe.core.errors import PixelpipeError
from pixelpipe.core.s3 import configured_s3_client
from pixelpipe.core.settings import Settings

_DEFAULTS = Settings()


class PostgresResource(dg.ConfigurableResource):
    """The events database (events_log and the export ledger). Empty `database_url`: the local
    stack of `pixelpipe up`, found at run time (so no password shows in the UI)."""

    database_url: str = ""

    def url(self) -> str:
        try:
            return self.database_url or resolve_database_url(Settings.from_env())
        except PixelpipeError as error:
            raise dg.Failure(description=str(error)) from None

    @contextlib.contextmanager
    def get_connection(self, autocommit: bool = False) -> Iterator[psycopg.Connection]:
        try:
            conn = psycopg.connect(self.url(), autocommit=autocommit, connect_timeout=10)
        except psycopg.OperationalError as error:
            raise dg.Failure(
                description="Cannot connect to PostgreSQL: check DATABASE_URL and that the "
                f"server is up ({' '.join(str(error).split())})."
            ) from None
        with conn:
            yield conn


class PipelineSettings(dg.ConfigurableResource):
    """Where exports go and how long the database keeps them: ExportSettings's fields, as a
    resource (the plain code takes either)."""

    client_bucket: str = _DEFAULTS.client_bucket
    backup_bucket: str = _DEFAULTS.backup_bucket
    export_grace_minutes: int = _DEFAULTS.export_grace_minutes
    retention_hours: int = _DEFAULTS.retention_hours
    rejected_retention_days: int = _DEFAULTS.rejected_retention_days
    rows_per_file: int = ROWS_PER_FILE
    billing_rate_per_1000: str = str(_DEFAULTS.billing_rate_per_1000)
    alert_webhook_url: str = _DEFAULTS.alert_webhook_url


class PixelpipeS3Resource(S3Resource):
    """S3 as configured; with no endpoint and no keys, the local stack's embedded S3 when
    `pixelpipe up` runs one for this PIXELPIPE_HOME (else AWS's usual credential chain)."""

    def get_client(self):
        if not self.endpoint_url and not self.aws_access_key_id:
            return configured_s3_client(Settings.from_env())
        return super().get_client()


def _optional(name: str):
    """EnvVar when the variable is set (resolved at run time), else None (e.g. AWS roles)."""
    return dg.EnvVar(name) if os.environ.get(name) else None


def resources_from_env() -> dict:
    """The resources the Definitions use, read from the same variables as the rest of pixelpipe."""
    settings = Settings.from_env()
    return {
        "postgres": PostgresResource(database_url=_optional("DATABASE_URL") or ""),
        "s3": PixelpipeS3Resource(
            endpoint_url=_optional("PIXELPIPE_S3_ENDPOINT"),
            aws_access_key_id=_optional("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=_optional("AWS_SECRET_ACCESS_KEY"),
            region_name=settings.aws_region,
        ),
        "settings": PipelineSettings(**dataclasses.asdict(ExportSettings.from_settings(settings))),
    }


# Dagster commands that run the job inside the process that loads the definitions.
_IN_PROCESS_COMMANDS = (["asset", "materialize"], ["job", "execute"])


def refuse_in_process_run_without_database() -> None:
    """`dagster asset materialize` (or `job execute`) with no database anywhere: stop with the one
    line that names the fix, before Dagster starts a run that would fail wrapped in stack frames.

    Only those commands: `dagster dev`, the code server and the tests load the definitions without
    a database, and a run launched from the UI fails with the same line as its description.
    """
    if Path(sys.argv[0]).name != "dagster" or sys.argv[1:3] not in _IN_PROCESS_COMMANDS:
        return
    if os.environ.get("DATABASE_URL"):
        return
    try:
        resolve_database_url(Settings.from_env())
    except PixelpipeError as error:
        sys.exit(f"pixelpipe: {error}")
