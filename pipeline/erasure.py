"""Erasure of one visitor of one site: gone from events_log, from the dead letter, and from every
exported hour's files and receipts in both buckets, also hours retention has purged (their files
are rewritten from the backup copy, the only one left).

Per hour, under the hour's lock (so an export cannot write the hour meanwhile): the hour's files
are fetched and their visitor rows counted; then one transaction deletes the rows from
events_log, records the counts in the erasures ledger and puts the rewritten files in the export
ledger, un-verified; then the files, the receipts and the checks. A run that dies half-way is
finished by running the same request again: it resumes the unfinished erasure, counting nothing
twice. Billing keeps what was delivered: rows erased from the files are counted in the receipt
(`erased_events`) and billed (docs/reading.md#erasure).
"""

import hashlib
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ingest_service.dead_letters import names_visitor
from pipeline.derived import rebuild_after_rewrite
from pipeline.export_files import object_key, rewrite_site_files
from pipeline.export_settings import ExportSettings
from pipeline.ledger import (
    SiteExport,
    erased_events,
    exported_site_hour,
    hour_lock,
    replace_site_hour,
)
from pipeline.object_store import delete_keys
from pipeline.publish import upload_both, write_receipt
from pipeline.statements import reissue_client_statements
from pipeline.verification import reconcile, verify_receipts, verify_tenants
from pixelpipe.core.errors import PixelpipeError
from pixelpipe.core.sites import write_key_hash


@dataclass
class Erasure:
    """What one erasure removed (the ledger row `erasures`; the row counts are its totals)."""

    erasure_id: int
    site: str
    rows_in_database: int = 0
    rows_in_files: int = 0
    dead_letters: int = 0
    hours_rewritten: list[datetime] = field(default_factory=list)
    statements_reissued: int = 0
    derived: dict[str, str] = field(default_factory=dict)  # what each derived dataset rebuilt


def visitor_sha256(visitor: str) -> str:
    """How the ledger names the visitor: never the id itself."""
    return hashlib.sha256(visitor.encode()).hexdigest()


def _open_erasure(conn, site: str, visitor: str, reason: str) -> int:
    """The unfinished erasure of the same request (a run that died), else a new one."""
    digest = visitor_sha256(visitor)
    row = conn.execute("SELECT id FROM erasures WHERE site_id = %s AND visitor_sha256 = %s AND "
                       "finished_at IS NULL ORDER BY id LIMIT 1", (site, digest)).fetchone()
    if row:
        return row[0]
    return conn.execute("INSERT INTO erasures (site_id, visitor_sha256, reason) VALUES (%s, %s, %s) "
                        "RETURNING id", (site, digest, reason)).fetchone()[0]


def _hours_to_visit(conn, site: str, visitor: str) -> list[datetime]:
    """Hours where the visitor may be: its rows in events_log, and every hour exported for the site."""
    return [hour.astimezone(UTC) for (hour,) in conn.execute(
        """SELECT date_trunc('hour', created_at, 'UTC') FROM events_log WHERE site_id = %s AND visitor_id = %s
           UNION SELECT ingest_hour FROM export_manifest WHERE site_id = %s ORDER BY 1""",
        (site, visitor, site))]


def _visitor_mask(visitor: str):
    def keep(batch: pa.RecordBatch) -> pa.Array:
        return pc.fill_null(pc.not_equal(batch.column("visitor_id"), pa.scalar(visitor)), True)
    return keep


def _fetch(client, bucket: str, keys: list[str], into: Path) -> list[Path]:
    paths = []
    for n, key in enumerate(keys):
        path = into / f"source-{n:05d}.parquet"
        client.download_file(bucket, key, str(path))
        paths.append(path)
    return paths


def _visitor_rows(paths: list[Path], visitor: str) -> int:
    """How many rows of these files are the visitor's (only their visitor_id column is read)."""
    return sum(pc.sum(pc.equal(pq.read_table(path, columns=["visitor_id"]).column("visitor_id"), visitor))
               .as_py() or 0 for path in paths)


def _rewrite(sources: list[Path], exported: SiteExport, hour: datetime, visitor: str, spool: Path,
             rows_per_file: int) -> tuple[SiteExport, list[Path]]:
    """The site-hour's files without the visitor, written locally: (what they are, their paths)."""
    site = exported.site_id
    rewritten = SiteExport(site, exported.client_bucket, exported.client_prefix)
    paths = []
    for file in rewrite_site_files(sources, site, hour, spool / "out", _visitor_mask(visitor),
                                   rows_per_file, rewritten.summary):
        rewritten.rows += file.rows
        rewritten.bytes += file.bytes
        rewritten.client_keys.append(object_key(site, hour, file.part, exported.client_prefix))
        rewritten.backup_keys.append(object_key(site, hour, file.part))
        rewritten.sha256.append(file.sha256)
        rewritten.receipt_files.append({"name": rewritten.backup_keys[-1].rsplit("/", 1)[1],
                                        "bytes": file.bytes, "rows": file.rows, "sha256": file.sha256})
        paths.append(file.path)
    return rewritten, paths


def _erase_hour(conn, client, settings: ExportSettings, erasure_id: int, site: str, visitor: str,
                hour: datetime, spool: Path) -> bool:
    """One hour, under its lock; counts go to erasure_hours. True when its files were rewritten."""
    exported = exported_site_hour(conn, hour, site)
    sources = _fetch(client, settings.backup_bucket, exported.backup_keys, spool) if exported else []
    in_files = _visitor_rows(sources, visitor)
    counted = conn.execute("SELECT 1 FROM erasure_hours WHERE erasure_id = %s AND ingest_hour = %s",
                           (erasure_id, hour)).fetchone() is not None
    verified = conn.execute("SELECT verified_at IS NOT NULL FROM export_hours WHERE ingest_hour = %s",
                            (hour,)).fetchone()
    # Rewrite when the files hold the visitor, or when an earlier run left the hour unverified.
    rewrite = exported is not None and (in_files > 0 or not (verified and verified[0]))
    rewritten, paths = _rewrite(sources, exported, hour, visitor, spool, settings.rows_per_file) \
        if rewrite else (None, [])
    with conn.transaction():
        in_database = conn.execute(
            "DELETE FROM events_log WHERE site_id = %s AND visitor_id = %s AND created_at >= %s "
            "AND created_at < %s + interval '1 hour'", (site, visitor, hour, hour)).rowcount
        if not counted and (in_database or in_files):  # else a run that died counted it
            conn.execute("INSERT INTO erasure_hours (erasure_id, ingest_hour, site_id, rows_in_database, "
                         "rows_in_files) VALUES (%s, %s, %s, %s, %s)",
                         (erasure_id, hour, site, in_database, in_files))
        if rewritten is not None:
            replace_site_hour(conn, hour, rewritten)  # un-verified until the checks below pass
    if rewritten is None:
        return False
    for path, client_key, backup_key in zip(paths, rewritten.client_keys, rewritten.backup_keys, strict=True):
        upload_both(client, path, rewritten.client_bucket, client_key, settings.backup_bucket, backup_key)
    delete_keys(client, exported.client_bucket, sorted(set(exported.client_keys) - set(rewritten.client_keys)))
    delete_keys(client, settings.backup_bucket, sorted(set(exported.backup_keys) - set(rewritten.backup_keys)))
    write_receipt(client, settings.backup_bucket, rewritten, hour, datetime.now(UTC),
                  erased_events(conn, hour).get(site, 0))
    return True


def _check_hour(conn, client, settings: ExportSettings, hour: datetime) -> list[str]:
    """The export's own checks on a rewritten hour; they mark it verified again when they pass."""
    _, mismatches = reconcile(conn, client, [hour])
    _, offenders = verify_tenants(conn, client, [hour], settings.client_bucket)
    _, problems = verify_receipts(conn, client, [hour], settings.backup_bucket)
    return mismatches + offenders + problems


def _site_for_key(conn):
    """Write key -> its site, for dead letters whose site is the key they were sent with."""
    cache: dict[str, str | None] = {}

    def site_for_key(key: str) -> str | None:
        if key not in cache:
            row = conn.execute("SELECT site_id FROM sites WHERE write_key_sha256 = %s",
                               (write_key_hash(key),)).fetchone()
            cache[key] = row[0] if row else None
        return cache[key]
    return site_for_key


def _erase_dead_letters(conn, site: str, visitor: str) -> int:
    """Dead-letter rows holding an event of the visitor of the site, each body read back as the
    collector read it (ingest_service/dead_letters.py): the decoded visitor and site, not text."""
    site_for_key = _site_for_key(conn)
    doomed, last = [], 0
    while True:  # a page at a time: the dead letter may be large
        page = conn.execute("SELECT id, endpoint, content_type, raw_body FROM events_rejected WHERE id > %s "
                            "AND raw_body IS NOT NULL ORDER BY id LIMIT 500", (last,)).fetchall()
        if not page:
            break
        last = page[-1][0]
        doomed += [row_id for row_id, endpoint, content_type, body in page
                   if names_visitor(endpoint, content_type, bytes(body), site, visitor, site_for_key)]
    if not doomed:
        return 0
    return conn.execute("DELETE FROM events_rejected WHERE id = ANY(%s)", (doomed,)).rowcount


def erase_visitor(conn, client, settings: ExportSettings, site: str, visitor: str, reason: str) -> Erasure:
    """Erase `visitor` of `site` everywhere we keep it; `conn` must be in autocommit mode.
    Raises PixelpipeError when a rewritten hour fails its checks (run the same request again)."""
    # The visitor exactly as given: "alice " is not "alice" (ids are compared as stored).
    site, reason = site.strip(), reason.strip()
    for name, value in (("site", site), ("visitor", visitor), ("reason", reason)):
        if not value:
            raise PixelpipeError(f"the {name} is empty: an erasure names the site, the visitor_id "
                                 "and why (for the ledger).")
    erasure = Erasure(_open_erasure(conn, site, visitor, reason), site)
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="pixelpipe-erase-") as spool:
        for n, hour in enumerate(_hours_to_visit(conn, site, visitor)):
            hour_spool = Path(spool) / str(n)
            hour_spool.mkdir()
            with hour_lock(conn, hour):
                if _erase_hour(conn, client, settings, erasure.erasure_id, site, visitor, hour, hour_spool):
                    erasure.hours_rewritten.append(hour)
                    failed += _check_hour(conn, client, settings, hour)
    erasure.dead_letters = _erase_dead_letters(conn, site, visitor)
    if failed:
        raise PixelpipeError(
            f"erasure {erasure.erasure_id} rewrote {len(erasure.hours_rewritten)} hours but their checks "
            f"failed: {'; '.join(failed[:5])}. Run the same erasure again: it resumes and rewrites "
            "the hours that do not check out.")
    months = {hour.replace(day=1, hour=0) for hour in erasure.hours_rewritten}
    try:
        erasure.statements_reissued = reissue_client_statements(conn, client, settings.client_bucket, months)
    except PixelpipeError as error:
        raise PixelpipeError(f"erasure {erasure.erasure_id}: {error}") from None
    try:  # whatever is derived from the rewritten files (registered in pipeline/derived.py)
        erasure.derived = rebuild_after_rewrite(conn, client, settings, site, erasure.hours_rewritten)
    except Exception as error:  # noqa: BLE001 - named, with what to do
        raise PixelpipeError(f"erasure {erasure.erasure_id} rewrote the raw hours, but a derived dataset "
                             f"failed to follow: {error}. Run the same erasure again.") from None
    # The totals from the ledger: a resumed erasure reports what all its runs removed.
    erasure.rows_in_database, erasure.rows_in_files = conn.execute(
        """UPDATE erasures SET finished_at = now(), dead_letters = dead_letters + %(dead)s,
               rows_in_database = (SELECT coalesce(sum(rows_in_database), 0) FROM erasure_hours
                                   WHERE erasure_id = %(id)s),
               rows_in_files = (SELECT coalesce(sum(rows_in_files), 0) FROM erasure_hours WHERE erasure_id = %(id)s),
               hours_rewritten = hours_rewritten + %(hours)s
           WHERE id = %(id)s RETURNING rows_in_database, rows_in_files""",
        {"dead": erasure.dead_letters, "id": erasure.erasure_id, "hours": len(erasure.hours_rewritten)}).fetchone()
    return erasure


def store_request(conn, site: str, visitor: str, reason: str) -> int:
    """Keep a request for the erase_visitor job; returns the id to launch it with. The job's
    config (which Dagster keeps for good, runs.run_body) then holds only this id, and the
    request is deleted when its erasure finishes."""
    if not visitor or not site.strip() or not reason.strip():
        raise PixelpipeError("an erasure names the site, the visitor_id and why (for the ledger): "
                             "one of them is empty.")
    return conn.execute("INSERT INTO erasure_requests (site_id, visitor_id, reason) VALUES (%s, %s, %s) "
                        "RETURNING id", (site.strip(), visitor, reason.strip())).fetchone()[0]


def erase_request(conn, client, settings: ExportSettings, request_id: int) -> Erasure:
    """Run a stored request, then delete it: from then on only the ledger's SHA-256 remains."""
    row = conn.execute("SELECT site_id, visitor_id, reason FROM erasure_requests WHERE id = %s",
                       (request_id,)).fetchone()
    if row is None:
        raise PixelpipeError(
            f"there is no pending erasure request {request_id}: it finished already (see the erasures "
            "table) or was never stored. Store one with `pixelpipe erase --site S --visitor V --reason R "
            "--in-dagster`.")
    erasure = erase_visitor(conn, client, settings, *row)
    conn.execute("DELETE FROM erasure_requests WHERE id = %s", (request_id,))
    return erasure
