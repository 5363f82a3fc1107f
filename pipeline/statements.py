"""A month's statements: what the export ledger says was delivered per site (what we bill, also
after retention), the clients' copies computed from their receipts, and the files kept in the
backup bucket. Plain code: monthly_billing (pipeline/defs/billing/) runs it for a month, an
erasure re-issues the clients' copies of months it touched."""

import csv
import io
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.ledger import site_destinations
from pixelpipe.core.errors import PixelpipeError
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


def unverified_hours(conn, start: datetime, end: datetime) -> list[datetime]:
    """Exported hours of [start, end) whose checks have not both passed: a statement must rest
    on verified hours only."""
    return [row[0] for row in conn.execute(
        """SELECT ingest_hour FROM export_hours
           WHERE ingest_hour >= %s AND ingest_hour < %s AND verified_at IS NULL ORDER BY 1""", (start, end))]


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
    receipts in its bucket; refused if they disagree with the ledger (what we bill)."""
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
        raise PixelpipeError(f"{month:%Y-%m} cannot be billed: the receipts in the clients' buckets "
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
