"""Publishing an exported hour: each file once to the backup bucket and server-side into the
client's bucket, while the next file is written; then whatever an earlier run left under the
hour that this run did not produce is removed, so a re-run leaves exactly its own objects."""

from __future__ import annotations

import tempfile
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from pipeline.export_files import (
    EXPORT_SCHEMA_VERSION,
    hour_prefix,
    object_key,
    resent_row_ids,
    write_hour_files,
)
from pipeline.export_settings import ExportSettings
from pipeline.ledger import (
    SiteExport,
    client_locations,
    erased_events,
    previous_keys,
    record_location,
    record_resent_rows,
    resent_rows,
    site_destinations,
)
from pipeline.object_store import copy_object, delete_keys, list_keys, upload_file
from pixelpipe.core.receipts import RECEIPT_NAME, HourSummary, receipt_bytes

UPLOAD_THREADS = 4


def upload_both(client, path: Path, client_bucket: str, client_key: str, backup_bucket: str,
                 backup_key: str) -> None:
    """Upload once, to our backup bucket, then copy server-side into the client's bucket.

    Half the upload work of two uploads, and it needs only write access to the client bucket.
    """
    upload_file(client, backup_bucket, backup_key, path)
    copy_object(client, backup_bucket, backup_key, client_bucket, client_key)
    path.unlink()


def publish_hour(conn, database_url: str, client, settings: ExportSettings, hour: datetime) -> list[SiteExport]:
    """Read the hour into per-site files and put each in both buckets; what was written, per site.

    Each place a site's files go is recorded (export_locations) before the first upload there.
    Re-sent copies of events are left out; which rows those were is recorded (export_duplicates)
    before any file is written, so a re-export leaves out the same rows even once the earlier
    hour they repeat is purged."""
    destinations = site_destinations(conn, settings.client_bucket)
    sites: dict[str, SiteExport] = {}
    recorded = resent_rows(conn, hour)
    summaries: dict[str, HourSummary] = {}
    # Uploads run beside the next file's writing; at most a few finished files wait on disk.
    with tempfile.TemporaryDirectory(prefix="pixelpipe-export-") as spool, \
            ThreadPoolExecutor(max_workers=UPLOAD_THREADS) as uploads:
        resent = uploads.submit(resent_row_ids, database_url, hour)  # beside the export's sort

        def left_out() -> set[int]:
            ids = resent.result() | recorded
            record_resent_rows(conn, hour, ids - recorded)
            return ids

        pending: list[Future] = []
        for file in write_hour_files(database_url, hour, Path(spool), settings.rows_per_file,
                                     left_out=left_out, summaries=summaries):
            site = sites.get(file.site_id)
            if site is None:
                bucket, prefix = destinations.get(file.site_id, (settings.client_bucket, ""))
                site = sites[file.site_id] = SiteExport(file.site_id, bucket, prefix)
                record_location(conn, hour, file.site_id, bucket, hour_prefix(file.site_id, hour, prefix))
            client_key = object_key(file.site_id, hour, file.part, site.client_prefix)
            backup_key = object_key(file.site_id, hour, file.part)
            pending.append(uploads.submit(upload_both, client, file.path, site.client_bucket,
                                          client_key, settings.backup_bucket, backup_key))
            site.rows += file.rows
            site.bytes += file.bytes
            site.client_keys.append(client_key)
            site.backup_keys.append(backup_key)
            site.sha256.append(file.sha256)
            site.receipt_files.append(
                {"name": backup_key.rsplit("/", 1)[1], "bytes": file.bytes, "rows": file.rows, "sha256": file.sha256})
            while len(pending) > 2 * UPLOAD_THREADS:
                pending.pop(0).result()  # re-raises an upload's failure: the run fails here
        for future in pending:
            future.result()
    for site in sites.values():
        site.summary = summaries[site.site_id]
    return list(sites.values())


def receipt_keys(site: SiteExport, hour: datetime) -> tuple[str, str]:
    """(client key, backup key) of a site-hour's receipt."""
    return (hour_prefix(site.site_id, hour, site.client_prefix) + RECEIPT_NAME,
            hour_prefix(site.site_id, hour) + RECEIPT_NAME)


def write_receipts(conn, client, settings: ExportSettings, hour: datetime, exported: list[SiteExport]) -> None:
    """Once every data file of the hour is in place: a receipt in both buckets for every site
    with rows in the hour, and a 0-row one for every other site known by then (an empty hour is
    proven empty, not just absent)."""
    destinations = site_destinations(conn, settings.client_bucket)
    sites = {site.site_id: site for site in exported}
    exported_at = datetime.now(UTC)
    erased = erased_events(conn, hour)
    known = [site for (site,) in conn.execute(
        "SELECT site_id FROM sites WHERE first_seen_at IS NULL OR first_seen_at <= %s", (hour,))]
    for site_id in sorted(set(sites) | set(known) | set(erased)):
        site = sites.get(site_id) or SiteExport(site_id, *destinations.get(site_id, (settings.client_bucket, "")))
        write_receipt(client, settings.backup_bucket, site, hour, exported_at, erased.get(site_id, 0))


def write_receipt(client, backup_bucket: str, site: SiteExport, hour: datetime, exported_at: datetime,
                  erased: int) -> None:
    """One site-hour's receipt, into the backup bucket and the client's."""
    body = receipt_bytes(site.site_id, hour, site.receipt_files, site.summary, EXPORT_SCHEMA_VERSION,
                         exported_at, erased)
    client_key, backup_key = receipt_keys(site, hour)
    client.put_object(Bucket=backup_bucket, Key=backup_key, Body=body, ContentType="application/json")
    client.put_object(Bucket=site.client_bucket, Key=client_key, Body=body, ContentType="application/json")


def remove_stale_objects(conn, client, backup_bucket: str, hour: datetime, exported: list[SiteExport]) -> int:
    """Delete what earlier exports of the hour wrote that this one did not, also where a site's
    bucket or prefix used to be; returns how many objects went."""
    written = {(s.client_bucket, k) for s in exported for k in s.client_keys}
    written |= {(backup_bucket, k) for s in exported for k in s.backup_keys}
    for site in exported:
        client_receipt, backup_receipt = receipt_keys(site, hour)
        written |= {(site.client_bucket, client_receipt), (backup_bucket, backup_receipt)}
    existing = previous_keys(conn, hour)
    places = {(bucket, prefix) for _, bucket, prefix in client_locations(conn, hour)}
    for site in exported:
        places.add((site.client_bucket, hour_prefix(site.site_id, hour, site.client_prefix)))
        places.add((backup_bucket, hour_prefix(site.site_id, hour)))
    for bucket, prefix in sorted(places):
        existing.update((bucket, key) for key in list_keys(client, bucket, prefix))
    stale: dict[str, list[str]] = defaultdict(list)
    for bucket, key in sorted(existing - written):
        stale[bucket].append(key)
    for bucket, keys in stale.items():
        delete_keys(client, bucket, keys)
    return sum(len(keys) for keys in stale.values())
