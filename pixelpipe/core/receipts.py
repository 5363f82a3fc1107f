"""Receipts: what we claim about each exported site-hour, written beside its files, and the check
anyone can run against them with read access to the bucket and nothing else.

`<hour prefix>_receipt.json` is written after every data file of the hour is in place, so its
presence means the hour is complete. It names files relative to its own prefix, so the same
receipt holds in the client's bucket (under its prefix) and in the backup bucket. Re-exporting
an hour writes the same bytes except `exported_at` (docs/reading.md#receipts). An erasure
rewrites the receipts of the hours it touches, counting the erased rows in `erased_events`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pixelpipe.core.s3 import read_parquet_metadata

RECEIPT_NAME = "_receipt.json"
RECEIPT_VERSION = 1
_HOUR_KEY = re.compile(
    r"^(?P<base>.*?)site_id=(?P<site>[^/]+)/date=(?P<date>\d{4}-\d{2}-\d{2})/hour=(?P<hour>\d{2})/(?P<name>[^/]+)$")


@dataclass
class HourSummary:
    """One site's rows in one hour, as the export streams them (ids and client times)."""

    rows: int = 0
    min_id: int | None = None
    max_id: int | None = None
    late_events: int = 0
    event_ids: hashlib._Hash = field(default_factory=hashlib.sha256)


def receipt_bytes(site_id: str, hour: datetime, files: list[dict], summary: HourSummary,
                  schema_version: int, exported_at: datetime, erased_events: int = 0) -> bytes:
    """The receipt, canonical JSON: `files` are {name, bytes, rows, sha256} in key order.
    `erased_events`: rows erased from the hour's files after they were delivered (billed)."""
    receipt = {
        "receipt_version": RECEIPT_VERSION,
        "site_id": site_id,
        "hour": hour.astimezone(UTC).strftime("%Y-%m-%dT%H:00:00Z"),
        "rows": summary.rows,
        "files": sorted(files, key=lambda f: f["name"]),
        "min_id": summary.min_id,
        "max_id": summary.max_id,
        # SHA-256 of the hour's event_id values (36-character text) concatenated in file order,
        # then row order: recomputable from the files alone.
        "event_ids_sha256": summary.event_ids.hexdigest(),
        "late_events": summary.late_events,  # client timestamp before the hour began
        "erased_events": erased_events,  # delivered, then erased on request: still billed
        "schema_version": schema_version,
        "exported_at": exported_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return (json.dumps(receipt, indent=2, sort_keys=True) + "\n").encode()


@dataclass(frozen=True)
class Problem:
    """One thing in the bucket that does not match what its receipt claims."""

    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def _listing(client, bucket: str, prefix: str) -> dict[str, int]:
    sizes = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        sizes.update({item["Key"]: item["Size"] for item in page.get("Contents", [])})
    return sizes


def verify_hour(client, bucket: str, hour_prefix: str, listed: dict[str, int]) -> list[Problem]:
    """Check one site-hour's objects (`listed`: key -> size) against its receipt."""
    where = f"s3://{bucket}/{hour_prefix}"
    receipt_key = hour_prefix + RECEIPT_NAME
    if receipt_key not in listed:
        return [Problem(where, "no receipt: the hour is incomplete or was never exported")]
    try:
        receipt = json.loads(client.get_object(Bucket=bucket, Key=receipt_key)["Body"].read())
        claimed = {f["name"]: f for f in receipt["files"]}
    except (ValueError, KeyError, TypeError) as error:
        return [Problem(where, f"unreadable receipt ({error})")]
    problems = []
    present = {key[len(hour_prefix):]: size for key, size in listed.items() if key != receipt_key}
    for name in sorted(set(claimed) - set(present)):
        problems.append(Problem(where + name, "missing (the receipt lists it)"))
    for name in sorted(set(present) - set(claimed)):
        problems.append(Problem(where + name, "extra (not in the receipt)"))
    rows = 0
    for name in sorted(set(claimed) & set(present)):
        file, key = claimed[name], hour_prefix + name
        if present[name] != file["bytes"]:
            problems.append(Problem(where + name, f"size {present[name]} bytes, receipt says {file['bytes']}"))
            continue
        digest = hashlib.sha256(client.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()
        if digest != file["sha256"]:
            problems.append(Problem(where + name, "SHA-256 differs from the receipt"))
            continue
        try:
            file_rows = read_parquet_metadata(client, bucket, key).num_rows
        except ValueError as error:
            problems.append(Problem(where + name, f"unreadable Parquet ({error})"))
            continue
        if file_rows != file["rows"]:
            problems.append(Problem(where + name, f"{file_rows} rows in its footer, receipt says {file['rows']}"))
        rows += file_rows
    if not problems and rows != receipt["rows"]:
        problems.append(Problem(where, f"{rows} rows in the files, receipt says {receipt['rows']}"))
    return problems


def verify_location(client, bucket: str, prefix: str = "", site: str | None = None,
                    start: datetime | None = None, end: datetime | None = None) -> tuple[int, list[Problem]]:
    """Every site-hour under s3://bucket/prefix (optionally one site, hours in [start, end])
    against its receipt; with a range, an hour of a site that has no objects at all is a problem
    too (an empty hour still gets a receipt). Returns (site-hours checked, problems)."""
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    hours: dict[tuple[str, datetime], dict[str, int]] = defaultdict(dict)
    prefixes: dict[tuple[str, datetime], str] = {}
    search = f"{prefix}site_id={site}/" if site else prefix
    for key, size in _listing(client, bucket, search).items():
        match = _HOUR_KEY.match(key)
        if not match or match["base"] != prefix:
            continue
        hour = datetime.strptime(f"{match['date']} {match['hour']}", "%Y-%m-%d %H").replace(tzinfo=UTC)
        if (start and hour < start) or (end and hour > end):
            continue
        hours[match["site"], hour][key] = size
        prefixes[match["site"], hour] = key[: -len(match["name"])]
    problems: list[Problem] = []
    if start and end:
        for seen_site in sorted({s for s, _ in hours} | ({site} if site else set())):
            hour = start
            while hour <= end:
                if (seen_site, hour) not in hours:
                    problems.append(Problem(
                        f"s3://{bucket}/{prefix}site_id={seen_site}/date={hour:%Y-%m-%d}/hour={hour:%H}/",
                        "no receipt: the hour is incomplete or was never exported"))
                hour += timedelta(hours=1)
    for site_hour, listed in sorted(hours.items()):
        problems += verify_hour(client, bucket, prefixes[site_hour], listed)
    return len(hours), problems


# Derived datasets (pipeline/analytics): one receipt per site, dataset and UTC day, in the hourly
# receipts' form, at <prefix>analytics/<dataset>/site_id=<site>/date=<YYYY-MM-DD>/_receipt.json.
ANALYTICS_DIR = "analytics/"
_DAY_KEY = re.compile(
    r"^(?P<base>.*?)analytics/(?P<dataset>[a-z_]+)/site_id=(?P<site>[^/]+)/date=(?P<date>\d{4}-\d{2}-\d{2})/(?P<name>[^/]+)$")


def dataset_receipt_bytes(site_id: str, dataset: str, day: str, files: list[dict], rows: int,
                          schema_version: int, computed_at: datetime, inputs: dict) -> bytes:
    """A derived day's receipt, canonical JSON: `files` as in receipt_bytes; `inputs` says what
    it was computed from (the day's exported hours, their rows, the re-sent copies left out)."""
    receipt = {
        "receipt_version": RECEIPT_VERSION,
        "site_id": site_id,
        "dataset": dataset,
        "date": day,
        "rows": rows,
        "files": sorted(files, key=lambda f: f["name"]),
        "inputs": inputs,
        "schema_version": schema_version,
        "exported_at": computed_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return (json.dumps(receipt, indent=2, sort_keys=True) + "\n").encode()


def verify_datasets(client, bucket: str, prefix: str = "", site: str | None = None,
                    datasets: tuple[str, ...] | None = None) -> tuple[int, list[Problem]]:
    """Every derived site-day under s3://bucket/prefix/analytics/ (optionally one site, some
    datasets) against its receipt, as verify_hour checks an hour. Returns (site-days, problems)."""
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    days: dict[str, dict[str, int]] = defaultdict(dict)
    for dataset in datasets or ("",):
        search = f"{prefix}{ANALYTICS_DIR}{dataset + '/' if dataset else ''}"
        if dataset and site:
            search += f"site_id={site}/"
        for key, size in _listing(client, bucket, search).items():
            match = _DAY_KEY.match(key)
            if not match or match["base"] != prefix or (site and match["site"] != site):
                continue
            days[key[: -len(match["name"])]][key] = size
    problems: list[Problem] = []
    for day_prefix, listed in sorted(days.items()):
        problems += verify_hour(client, bucket, day_prefix, listed)
    return len(days), problems
