"""monthly_billing: usage statements per site, computed from the export ledger (which survives
retention), never from events_log (which retention empties). What is billed is what was
delivered: the rows in the files plus any erased from them since (the delivered_events view)."""

import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
from dagster_aws.s3 import S3Resource

from pipeline.assets.export import hourly_export
from pipeline.ledger import site_destinations
from pipeline.partitions import hourly_partitions, monthly_partitions
from pipeline.resources import PipelineSettings, PostgresResource
from pixelpipe.core.statements import (
    amount_for,
    month_receipts,
    site_line,
    statement_bytes,
    statement_key,
)


@dataclass(frozen=True)
class StatementLine:
    site_id: str
    events: int
    amount_exact: Decimal
    amount_usd: Decimal
    first_seen_at: datetime | None
    new_site: bool


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


def unverified_hours(conn, start: datetime, end: datetime) -> list[datetime]:
    """Exported hours of [start, end) whose checks have not both passed: a statement must rest
    on verified hours only."""
    return [row[0] for row in conn.execute(
        """SELECT ingest_hour FROM export_hours
           WHERE ingest_hour >= %s AND ingest_hour < %s AND verified_at IS NULL ORDER BY 1""", (start, end))]


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


def compute_statement(conn, start: datetime, end: datetime, rate: Decimal) -> list[StatementLine]:
    lines = []
    for site, events, first_seen in conn.execute(
        """SELECT m.site_id, sum(m.events)::bigint, s.first_seen_at
           FROM delivered_events m LEFT JOIN sites s USING (site_id)
           WHERE m.ingest_hour >= %s AND m.ingest_hour < %s
           GROUP BY m.site_id, s.first_seen_at ORDER BY m.site_id""", (start, end)):
        exact, rounded = amount_for(events, rate)
        new = first_seen is not None and start <= first_seen < end
        lines.append(StatementLine(site, events, exact, rounded, first_seen, new))
    return lines


def statements_from_receipts(client, destinations: dict[str, tuple[str, str]], default_bucket: str,
                             month: datetime, lines: list[StatementLine], rate: Decimal) -> dict:
    """(bucket, prefix) -> statement.json for the client, each site's line computed from the
    receipts in its bucket; a Failure if they disagree with the ledger (what we bill)."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    disagree = []
    for line in lines:
        bucket, prefix = destinations.get(line.site_id, (default_bucket, ""))
        receipts = month_receipts(client, bucket, prefix, line.site_id, month)
        client_line = site_line(line.site_id, receipts, rate)
        if client_line["events"] != line.events:
            disagree.append(f"{line.site_id}: {line.events} in the ledger, {client_line['events']} in its receipts")
        grouped.setdefault((bucket, prefix), []).append(client_line)
    if disagree:
        raise dg.Failure(description=f"{month:%Y-%m} cannot be billed: the receipts in the clients' buckets "
                         f"disagree with the export ledger ({'; '.join(disagree[:10])}). Re-run hourly_export "
                         "for the month's hours of those sites (it rewrites files and receipts), then this month.")
    return {place: statement_bytes(month, rate, site_lines) for place, site_lines in grouped.items()}


def put_client_statements(client, month: datetime, statements: dict) -> None:
    for (bucket, prefix), body in statements.items():
        client.put_object(Bucket=bucket, Key=statement_key(prefix, month), Body=body, ContentType="application/json")


def reissue_client_statements(conn, client, default_bucket: str, months: set[datetime]) -> int:
    """The clients' statements of months already billed, again from their receipts, after an
    erasure rewrote some: events and amounts stay (what was delivered is billed), the receipts'
    digest follows the new receipts. Returns how many months were re-issued."""
    reissued = 0
    for month in sorted(months):
        stored = conn.execute(
            """SELECT site_id, events, amount_exact, amount_usd, first_seen_at, new_site, rate_per_1000
               FROM billing_statements WHERE billing_month = %s ORDER BY site_id""", (month.date(),)).fetchall()
        if not stored:
            continue
        rate = Decimal(format(stored[0][6].normalize(), "f"))  # as the statement first wrote it
        lines = [StatementLine(*row[:6]) for row in stored]
        put_client_statements(client, month, statements_from_receipts(
            client, site_destinations(conn, default_bucket), default_bucket, month, lines, rate))
        reissued += 1
    return reissued


def store_statement(conn, month: datetime, lines: list[StatementLine], rate: Decimal) -> None:
    """Replace the month's rows: re-running a month gives the same statement, never two."""
    with conn.transaction():
        conn.execute("DELETE FROM billing_statements WHERE billing_month = %s", (month.date(),))
        with conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO billing_statements (billing_month, site_id, events, rate_per_1000,
                       amount_exact, amount_usd, first_seen_at, new_site)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s)""",
                [(month.date(), ln.site_id, ln.events, rate, ln.amount_exact, ln.amount_usd,
                  ln.first_seen_at, ln.new_site) for ln in lines])


def statement_files(month: datetime, lines: list[StatementLine]) -> dict[str, bytes]:
    header = ["billing_month", "site_id", "events", "amount_usd", "amount_exact", "first_seen_at", "new_site"]
    rows = [[f"{month:%Y-%m}", ln.site_id, ln.events, str(ln.amount_usd), str(ln.amount_exact),
             ln.first_seen_at.isoformat() if ln.first_seen_at else "", ln.new_site] for ln in lines]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    table = pa.table({
        "billing_month": pa.array([f"{month:%Y-%m}"] * len(lines), pa.string()),
        "site_id": pa.array([ln.site_id for ln in lines], pa.string()),
        "events": pa.array([ln.events for ln in lines], pa.int64()),
        "amount_usd": pa.array([ln.amount_usd for ln in lines], pa.decimal128(14, 2)),
        "amount_exact": pa.array([ln.amount_exact for ln in lines], pa.decimal128(20, 8)),
        "first_seen_at": pa.array([ln.first_seen_at for ln in lines], pa.timestamp("us", tz="UTC")),
        "new_site": pa.array([ln.new_site for ln in lines], pa.bool_()),
    })
    parquet = io.BytesIO()
    pq.write_table(table, parquet, compression="zstd")
    return {"statement.csv": text.getvalue().encode(), "statement.parquet": parquet.getvalue()}


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
        client_statements = statements_from_receipts(client, site_destinations(conn, settings.client_bucket),
                                                     settings.client_bucket, start, lines, rate)
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
