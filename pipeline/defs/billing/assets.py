"""monthly_billing: usage statements per site, computed from the export ledger (which survives
retention), never from events_log (which retention empties). What is billed is what was
delivered: the rows in the files plus any erased from them since (the delivered_events view)."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import dagster as dg
from dagster_aws.s3 import S3Resource

from pipeline.defs.export.assets import hourly_export
from pipeline.ledger import site_destinations
from pipeline.partitions import hourly_partitions, monthly_partitions
from pipeline.resources import PipelineSettings, PostgresResource
from pipeline.statements import (
    compute_statement,
    put_client_statements,
    statement_files,
    statements_from_receipts,
    store_statement,
    unverified_hours,
)
from pixelpipe.core.errors import PixelpipeError


def month_window(context) -> tuple[datetime, datetime]:
    window = context.partition_time_window
    return window.start.astimezone(UTC), window.end.astimezone(UTC)


def refuse_unfinished_month(start: datetime, end: datetime, now: datetime, grace_minutes: int) -> None:
    """Dagster offers no partition for the running month; this covers the first hour after
    it ends, while its last hour cannot be exported yet."""
    ready_at = end + timedelta(hours=1, minutes=grace_minutes)
    if now < ready_at:
        raise dg.Failure(description=f"{start:%Y-%m} has not ended, or its last hour is not "
                         f"exportable yet; bill it from {ready_at:%Y-%m-%d %H:%M} UTC.")


def missing_hours(conn, start: datetime, end: datetime) -> list[datetime]:
    """Hours of [start, end) with no export recorded (hours before the partitions begin don't count)."""
    first = max(start, hourly_partitions.start.astimezone(UTC))
    exported = {row[0] for row in conn.execute(
        "SELECT ingest_hour FROM export_hours WHERE ingest_hour >= %s AND ingest_hour < %s", (start, end))}
    hours, hour = [], first
    while hour < end:
        if hour not in exported:
            hours.append(hour)
        hour += timedelta(hours=1)
    return hours


def _ranges(hours: list[datetime]) -> str:
    """Consecutive hours folded into ranges, for a readable failure message."""
    spans, start, previous = [], None, None
    for hour in hours:
        if start is None:
            start = previous = hour
        elif hour - previous == timedelta(hours=1):
            previous = hour
        else:
            spans.append((start, previous))
            start = previous = hour
    if start is not None:
        spans.append((start, previous))
    return ", ".join(f"{a:%Y-%m-%d %H}:00" if a == b else f"{a:%Y-%m-%d %H}:00..{b:%Y-%m-%d %H}:00"
                     for a, b in spans)


@dg.asset(
    partitions_def=monthly_partitions,
    deps=[hourly_export],
    pool="postgres",
    group_name="billing",
    kinds={"postgres", "s3"},
    description="Per site and month: events exported, amount in USD at the configured rate per "
    "1,000 events (PIXELPIPE_BILLING_RATE_PER_1000, default $0.01), and whether the site is new "
    "that month. From the export ledger (delivered events, also those erased since), so it stays "
    "exact after retention; refused while any hour of the month is missing or not verified by both "
    "export checks.",
)
def monthly_billing(context: dg.AssetExecutionContext, postgres: PostgresResource, s3: S3Resource,
                    settings: PipelineSettings) -> dg.MaterializeResult:
    start, end = month_window(context)
    refuse_unfinished_month(start, end, datetime.now(UTC), settings.export_grace_minutes)
    rate = Decimal(settings.billing_rate_per_1000)
    with postgres.get_connection(autocommit=True) as conn:
        missing = missing_hours(conn, start, end)
        if missing:
            raise dg.Failure(
                description=f"{start:%Y-%m} cannot be billed: {len(missing)} hours are not exported: "
                f"{_ranges(missing)}. Backfill hourly_export for them, then re-run this month.",
                metadata={"missing_hours": len(missing)})
        unverified = unverified_hours(conn, start, end)
        if unverified:
            raise dg.Failure(
                description=f"{start:%Y-%m} cannot be billed: {len(unverified)} hours are exported but not "
                f"verified: {_ranges(unverified)}. Their checks (export_reconciles, no_cross_tenant_rows) "
                "failed or have not run: re-run hourly_export for them, then re-run this month.",
                metadata={"unverified_hours": len(unverified)})
        lines = compute_statement(conn, start, end, rate)
        client = s3.get_client()
        try:
            client_statements = statements_from_receipts(
                client, site_destinations(conn, settings.client_bucket), settings.client_bucket, start, lines, rate)
        except PixelpipeError as error:
            raise dg.Failure(description=str(error)) from None
        store_statement(conn, start, lines, rate)
    put_client_statements(client, start, client_statements)
    for name, body in statement_files(start, lines).items():
        client.put_object(Bucket=settings.backup_bucket, Key=f"billing/month={start:%Y-%m}/{name}", Body=body)
    table = ["| site_id | events | amount (USD) | new site |", "|---|---:|---:|---|"]
    table += [f"| {ln.site_id} | {ln.events} | {ln.amount_usd} | {'yes' if ln.new_site else ''} |"
              for ln in lines[:100]]
    return dg.MaterializeResult(metadata={
        "sites": len(lines),
        "events": sum(ln.events for ln in lines),
        "amount_usd": float(sum((ln.amount_usd for ln in lines), Decimal(0))),
        "new_sites": sum(ln.new_site for ln in lines),
        "statement": dg.MetadataValue.md("\n".join(table)),
        "objects": f"s3://{settings.backup_bucket}/billing/month={start:%Y-%m}/",
    })


@dg.asset_check(asset=monthly_billing, partitions_def=monthly_partitions,
                description="The statement's total events equal the events delivered in the month (the manifest's "
                "rows plus those erased from the files since).")
def billing_matches_manifest(context, postgres: PostgresResource) -> dg.AssetCheckResult:
    start, end = month_window(context)
    with postgres.get_connection() as conn:
        billed = conn.execute("SELECT coalesce(sum(events), 0) FROM billing_statements WHERE billing_month = %s",
                              (start.date(),)).fetchone()[0]
        exported = conn.execute(
            "SELECT coalesce(sum(events), 0) FROM delivered_events WHERE ingest_hour >= %s AND ingest_hour < %s",
            (start, end)).fetchone()[0]
    return dg.AssetCheckResult(passed=billed == exported,
                               metadata={"billed_events": int(billed), "manifest_rows": int(exported)})
