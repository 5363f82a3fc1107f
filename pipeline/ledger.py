"""The export ledger: export_hours, export_manifest and sites.

Export state lives here, per hour and per (hour, site), never in events_log rows. The export
writes it only after both copies are uploaded; the checks mark it verified; retention and
billing trust nothing else.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
from psycopg import sql

from pixelpipe.core.receipts import HourSummary


@dataclass
class SiteExport:
    """What one hour's export wrote for one site."""

    site_id: str
    client_bucket: str
    client_prefix: str
    first_seen_at: datetime | None = None
    rows: int = 0
    bytes: int = 0
    client_keys: list[str] = field(default_factory=list)
    backup_keys: list[str] = field(default_factory=list)
    sha256: list[str] = field(default_factory=list)
    # For the receipt: each file's {name, bytes, rows, sha256}, and the rows' summary.
    receipt_files: list[dict] = field(default_factory=list)
    summary: HourSummary = field(default_factory=HourSummary)


@dataclass(frozen=True)
class HourState:
    """What an earlier export recorded for the hour: its rows, and whether retention purged it."""

    rows: int
    purged_at: datetime | None


def hour_state(conn: psycopg.Connection, hour: datetime) -> HourState | None:
    row = conn.execute(
        "SELECT rows, purged_at FROM export_hours WHERE ingest_hour = %s", (hour,)).fetchone()
    return HourState(*row) if row else None


def site_destinations(conn: psycopg.Connection, default_bucket: str) -> dict[str, tuple[str, str]]:
    """site_id -> (client bucket, prefix) for every known site."""
    return {
        site: (bucket or default_bucket, prefix or "")
        for site, bucket, prefix in conn.execute(
            "SELECT site_id, client_bucket, client_prefix FROM sites")
    }


def previous_keys(conn: psycopg.Connection, hour: datetime) -> set[tuple[str, str]]:
    """(bucket, key) of every object an earlier export of this hour recorded."""
    keys = set()
    for client_bucket, client_keys, backup_bucket, backup_keys in conn.execute(
        """SELECT client_bucket, client_keys, backup_bucket, backup_keys
           FROM export_manifest WHERE ingest_hour = %s""", (hour,)):
        keys.update((client_bucket, k) for k in client_keys)
        keys.update((backup_bucket, k) for k in backup_keys)
    return keys


def unverify_hour(conn: psycopg.Connection, hour: datetime) -> None:
    """Forget the hour's verification before any of its objects is touched: a run that dies
    half-way must leave nothing verified that retention could then drop."""
    with conn.transaction():
        conn.execute("UPDATE export_hours SET reconciled_at = NULL, tenants_verified_at = NULL "
                     "WHERE ingest_hour = %s", (hour,))
        conn.execute("UPDATE export_manifest SET verified_at = NULL WHERE ingest_hour = %s", (hour,))


def record_location(conn: psycopg.Connection, hour: datetime, site_id: str, bucket: str,
                    prefix: str) -> None:
    """Note where the hour's files for a site are about to be written (before the upload)."""
    conn.execute("""INSERT INTO export_locations (ingest_hour, site_id, bucket, prefix)
                    VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING""", (hour, site_id, bucket, prefix))


def client_locations(conn: psycopg.Connection, hour: datetime) -> set[tuple[str, str, str]]:
    """(site, bucket, hour prefix) of every place the hour's client files were ever written."""
    return {(site, bucket, prefix) for site, bucket, prefix in conn.execute(
        "SELECT site_id, bucket, prefix FROM export_locations WHERE ingest_hour = %s", (hour,))}


def record_export(conn: psycopg.Connection, hour: datetime, sites: list[SiteExport],
                  backup_bucket: str) -> None:
    """Replace the hour's ledger rows in one transaction; clears earlier verification."""
    with conn.transaction():
        conn.execute("DELETE FROM export_manifest WHERE ingest_hour = %s", (hour,))
        conn.execute(
            """INSERT INTO export_hours (ingest_hour, rows, sites, files, bytes, exported_at)
               VALUES (%s, %s, %s, %s, %s, now())
               ON CONFLICT (ingest_hour) DO UPDATE SET
                   rows = EXCLUDED.rows, sites = EXCLUDED.sites, files = EXCLUDED.files,
                   bytes = EXCLUDED.bytes, exported_at = EXCLUDED.exported_at,
                   reconciled_at = NULL, tenants_verified_at = NULL""",
            (hour, sum(s.rows for s in sites), len(sites),
             sum(len(s.client_keys) for s in sites), sum(s.bytes for s in sites)),
        )
        with conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO export_manifest (ingest_hour, site_id, rows, bytes, client_bucket,
                       client_keys, backup_bucket, backup_keys, sha256, exported_at)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, now())""",
                [(hour, s.site_id, s.rows, s.bytes, s.client_bucket, s.client_keys,
                  backup_bucket, s.backup_keys, s.sha256) for s in sites],
            )
            # Domain discovery: the first hour a site is seen in.
            cur.executemany(
                """INSERT INTO sites (site_id, first_seen_at) VALUES (%s, %s)
                   ON CONFLICT (site_id) DO UPDATE
                   SET first_seen_at = LEAST(sites.first_seen_at, EXCLUDED.first_seen_at)""",
                [(s.site_id, s.first_seen_at or hour) for s in sites],
            )


def manifest_rows(conn: psycopg.Connection, hour: datetime) -> list[tuple]:
    """(site, rows, client bucket, client keys, backup bucket, backup keys) of the hour."""
    return conn.execute(
        """SELECT site_id, rows, client_bucket, client_keys, backup_bucket, backup_keys
           FROM export_manifest WHERE ingest_hour = %s ORDER BY site_id""", (hour,),
    ).fetchall()


def mark_check(conn: psycopg.Connection, hour: datetime, column: str, passed: bool) -> None:
    """Record a check's verdict on the hour (and per site for the reconciliation)."""
    assert column in ("reconciled_at", "tenants_verified_at")
    with conn.transaction():
        conn.execute(
            sql.SQL("UPDATE export_hours SET {} = CASE WHEN %s THEN now() END WHERE ingest_hour = %s")
            .format(sql.Identifier(column)), (passed, hour))
        if column == "reconciled_at":
            conn.execute(
                "UPDATE export_manifest SET verified_at = CASE WHEN %s THEN now() END "
                "WHERE ingest_hour = %s", (passed, hour))


def resent_rows(conn: psycopg.Connection, hour: datetime) -> set[int]:
    """Row ids an export of the hour left out as re-sent copies of earlier events."""
    return {row_id for (row_id,) in conn.execute(
        "SELECT id FROM export_duplicates WHERE ingest_hour = %s", (hour,))}


def record_resent_rows(conn: psycopg.Connection, hour: datetime, ids: set[int]) -> None:
    if ids:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO export_duplicates (ingest_hour, id) VALUES (%s, %s) "
                            "ON CONFLICT DO NOTHING", [(hour, row_id) for row_id in sorted(ids)])


def erased_events(conn: psycopg.Connection, hour: datetime) -> dict[str, int]:
    """site -> rows erased from the hour's delivered files (the receipts and billing count them)."""
    return dict(conn.execute(
        "SELECT site_id, sum(rows_in_files)::bigint FROM erasure_hours WHERE ingest_hour = %s "
        "GROUP BY site_id HAVING sum(rows_in_files) > 0", (hour,)).fetchall())


# Advisory lock class of an ingest hour's objects (the second key is the hour since the epoch).
_HOUR_LOCK = 7460


@contextlib.contextmanager
def hour_lock(conn: psycopg.Connection, hour: datetime) -> Iterator[None]:
    """Hold the hour against the other writer of its objects: the export and an erasure never
    rewrite the same hour at once (an erasure could otherwise miss files being exported)."""
    key = int(hour.astimezone(UTC).timestamp()) // 3600
    conn.execute("SELECT pg_advisory_lock(%s, %s)", (_HOUR_LOCK, key))
    try:
        yield
    finally:
        with contextlib.suppress(psycopg.OperationalError):  # a lost session has released it
            conn.execute("SELECT pg_advisory_unlock(%s, %s)", (_HOUR_LOCK, key))


def exported_site_hour(conn: psycopg.Connection, hour: datetime, site: str) -> SiteExport | None:
    """What the ledger says the last export wrote for one site-hour (files, rows, where)."""
    row = conn.execute(
        """SELECT client_bucket, client_keys, backup_keys, rows, bytes, sha256 FROM export_manifest
           WHERE ingest_hour = %s AND site_id = %s""", (hour, site)).fetchone()
    if row is None:
        return None
    bucket, client_keys, backup_keys, rows, size, sha256 = row
    prefix = client_keys[0].split("site_id=", 1)[0] if client_keys else ""
    return SiteExport(site, bucket, prefix, rows=rows, bytes=size, client_keys=list(client_keys),
                      backup_keys=list(backup_keys), sha256=list(sha256))


def replace_site_hour(conn: psycopg.Connection, hour: datetime, site: SiteExport) -> None:
    """Put a rewritten site-hour in the ledger (no row left: no manifest row, as an export of
    the hour would leave) and the hour's totals with it. Call inside a transaction."""
    if site.rows:
        conn.execute(
            """UPDATE export_manifest SET rows = %s, bytes = %s, client_keys = %s, backup_keys = %s,
                   sha256 = %s, verified_at = NULL WHERE ingest_hour = %s AND site_id = %s""",
            (site.rows, site.bytes, site.client_keys, site.backup_keys, site.sha256, hour, site.site_id))
    else:
        conn.execute("DELETE FROM export_manifest WHERE ingest_hour = %s AND site_id = %s", (hour, site.site_id))
    conn.execute(
        """UPDATE export_hours h SET rows = t.rows, sites = t.sites, files = t.files, bytes = t.bytes,
               reconciled_at = NULL, tenants_verified_at = NULL
           FROM (SELECT coalesce(sum(rows), 0) AS rows, count(*) AS sites,
                        coalesce(sum(cardinality(client_keys)), 0) AS files, coalesce(sum(bytes), 0) AS bytes
                 FROM export_manifest WHERE ingest_hour = %s) t
           WHERE h.ingest_hour = %s""", (hour, hour))
