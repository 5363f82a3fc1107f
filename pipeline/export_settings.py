"""What the plain code of the pipeline needs to know of the configuration (buckets, grace,
retention, file size, rate), without Dagster: the CLI builds it from the environment, the
Dagster resource PipelineSettings (pipeline/resources.py) has the same fields and is passed
as is. Each variable is still defined once, in pixelpipe/core/settings.py."""

from dataclasses import dataclass

from pixelpipe.core.settings import Settings

# A new Parquet file every this many rows of a site-hour (row groups stay 64 Ki rows).
ROWS_PER_FILE = 1_000_000


@dataclass(frozen=True)
class ExportSettings:
    client_bucket: str
    backup_bucket: str
    export_grace_minutes: int
    retention_hours: int
    rejected_retention_days: int
    billing_rate_per_1000: str
    alert_webhook_url: str
    rows_per_file: int = ROWS_PER_FILE

    @classmethod
    def from_settings(cls, settings: Settings) -> "ExportSettings":
        return cls(
            client_bucket=settings.client_bucket,
            backup_bucket=settings.backup_bucket,
            export_grace_minutes=settings.export_grace_minutes,
            retention_hours=settings.retention_hours,
            rejected_retention_days=settings.rejected_retention_days,
            billing_rate_per_1000=str(settings.billing_rate_per_1000),
            alert_webhook_url=settings.alert_webhook_url,
        )
