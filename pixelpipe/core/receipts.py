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

from pyarrow.lib import ArrowException

from pixelpipe.core.s3 import read_parquet_metadata

RECEIPT_NAME = "_receipt.json"
RECEIPT_VERSION = 1
# A key relative to the location's prefix; `base` is a site's own client prefix, if any.
_HOUR_KEY = re.compile(
    r"^(?P<base>(?:[^/]+/)*?)site_id=(?P<site>[^/]+)/date=(?P<date>[^/]*)/hour=(?P<hour>[^/]*)/(?P<name>[^/]+)$")


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


# Objects a bucket may hold beside the exported hours (key relative to a location's prefix,
# which may itself be a site's client prefix). Whatever matches none of these, nor an hour's
# folder, is a stray: verify names it rather than skipping it. Add here what else we publish.
OTHER_OBJECTS: list[tuple[re.Pattern, str]] = [
    (re.compile(r"^(?:(?!site_id=)[^/]+/)*billing/month=\d{4}-\d{2}/statement\.(?:json|csv|parquet)$"),
     "billing statement (checked with --billing)"),
    (re.compile(r"^(?:(?!site_id=)[^/]+/)*analytics/[a-z_]+/site_id=[^/]+/date=\d{4}-\d{2}-\d{2}/[^/]+$"),
     "a derived dataset's day (checked by verify_datasets, --dataset)"),
]


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_receipt(body: bytes, site: str, period: tuple[str, str]) -> tuple[dict, dict[str, dict], list[str]]:
    """(receipt, its files by name, what is wrong with it): every field verify relies on is
    checked here, so a crafted receipt is a named problem, never a traceback. A malformed entry
    is kept by name with no fields (so its file is not also called extra). `period` is the field
    naming what the folder holds and its value: ("hour", "2026-10-01T13:00:00Z") for an exported
    hour, ("date", "2026-10-01") for a derived day."""
    try:
        receipt = json.loads(body)
    except ValueError as error:
        return {}, {}, [f"unreadable receipt (not JSON: {error})"]
    if not isinstance(receipt, dict):
        return {}, {}, ["unreadable receipt (not a JSON object)"]
    problems = []
    if not _int(receipt.get("rows")):
        problems.append("receipt has no row count ('rows')")
    if receipt.get("site_id") != site:
        problems.append(f"receipt is for site {receipt.get('site_id')!r}, its folder for {site!r}")
    field, value = period
    if receipt.get(field) != value:
        problems.append(f"receipt is for {field} {receipt.get(field)!r}, its folder for {value}")
    files = receipt.get("files")
    if not isinstance(files, list):
        return receipt, {}, [*problems, "receipt has no file list ('files')"]
    claimed: dict[str, dict] = {}
    for n, file in enumerate(files):
        if not isinstance(file, dict) or not isinstance(file.get("name"), str) or "/" in file["name"] \
                or not file["name"]:
            problems.append(f"receipt file entry {n} has no valid 'name'")
            continue
        missing = [k for k, ok in (("bytes", _int(file.get("bytes"))), ("rows", _int(file.get("rows"))),
                                   ("sha256", isinstance(file.get("sha256"), str))) if not ok]
        if missing:  # named by the receipt, so not "extra"; not checkable either
            problems.append(f"receipt entry for {file['name']} has no valid {', '.join(repr(k) for k in missing)}")
            claimed[file["name"]] = {}
        elif file["name"] in claimed:
            problems.append(f"receipt lists {file['name']} twice")
        else:
            claimed[file["name"]] = file
    return receipt, claimed, problems


def check_file(client, bucket: str, key: str, size: int, claim: dict) -> tuple[int | None, list[str]]:
    """One data file against its receipt entry: size, SHA-256, then the row count in its
    Parquet footer. Returns (rows, problems); rows is None when the file does not check out."""
    if size != claim["bytes"]:
        return None, [f"size {size} bytes, receipt says {claim['bytes']}"]
    digest = hashlib.sha256(client.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()
    if digest != claim["sha256"]:
        return None, ["SHA-256 differs from the receipt"]
    try:
        rows = read_parquet_metadata(client, bucket, key).num_rows
    except (ValueError, OSError, ArrowException) as error:
        return None, [f"unreadable Parquet ({' '.join(str(error).split())[:200]})"]
    if rows != claim["rows"]:
        return None, [f"{rows} rows in its footer, receipt says {claim['rows']}"]
    return rows, []


def verify_hour(client, bucket: str, hour_prefix: str, listed: dict[str, int], site: str,
                hour: datetime) -> list[Problem]:
    """Check one site-hour's objects (`listed`: key -> size) against its receipt."""
    return _verify_folder(client, bucket, hour_prefix, listed, site, ("hour", hour.strftime("%Y-%m-%dT%H:00:00Z")))


def _verify_folder(client, bucket: str, hour_prefix: str, listed: dict[str, int], site: str,
                   period: tuple[str, str]) -> list[Problem]:
    """One receipted folder (an exported site-hour or a derived site-day) against its receipt."""
    where = f"s3://{bucket}/{hour_prefix}"
    receipt_key = hour_prefix + RECEIPT_NAME
    if receipt_key not in listed:
        return [Problem(where, "no receipt: the hour is incomplete or was never exported")]
    receipt, claimed, malformed = read_receipt(
        client.get_object(Bucket=bucket, Key=receipt_key)["Body"].read(), site, period)
    problems = [Problem(where + RECEIPT_NAME, what) for what in malformed]
    present = {key[len(hour_prefix):]: size for key, size in listed.items() if key != receipt_key}
    for name in sorted(set(claimed) - set(present)):
        problems.append(Problem(where + name, "missing (the receipt lists it)"))
    for name in sorted(set(present) - set(claimed)):
        problems.append(Problem(where + name, "extra (not in the receipt)"))
    rows = 0
    for name in sorted(name for name in set(claimed) & set(present) if claimed[name]):
        file_rows, wrong = check_file(client, bucket, hour_prefix + name, present[name], claimed[name])
        problems += [Problem(where + name, what) for what in wrong]
        rows += file_rows or 0
    if not problems and rows != receipt["rows"]:
        problems.append(Problem(where, f"{rows} rows in the files, receipt says {receipt['rows']}"))
    return problems


def verify_location(client, bucket: str, prefix: str = "", site: str | None = None,
                    start: datetime | None = None, end: datetime | None = None) -> tuple[int, list[Problem]]:
    """Every object under s3://bucket/prefix (optionally one site, hours in [start, end]) is
    accounted for: each site-hour's files against its receipt (also under a site's own client
    prefix), statements left to --billing, and anything else (a key that is no hour, a file in
    a sub-folder of an hour, a stray object) is a problem. With a range, an hour of a site that
    has no objects at all is a problem too (an empty hour still gets a receipt). Returns
    (site-hours checked, problems)."""
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    hours: dict[tuple[str, str, datetime], dict[str, int]] = defaultdict(dict)
    problems: list[Problem] = []
    search = f"{prefix}site_id={site}/" if site else prefix
    for key, size in _listing(client, bucket, search).items():
        where = f"s3://{bucket}/{key}"
        relative = key[len(prefix):]
        match = _HOUR_KEY.match(relative)
        if match is None or "site_id=" in match["base"]:
            if not any(pattern.match(relative) for pattern, _ in OTHER_OBJECTS):
                problems.append(Problem(where, "stray object: not a file of an exported hour's folder "
                                        "(site_id=S/date=YYYY-MM-DD/hour=HH/NAME) nor a statement"))
            continue
        try:
            hour = datetime.strptime(f"{match['date']} {match['hour']}", "%Y-%m-%d %H").replace(tzinfo=UTC)
        except ValueError:
            problems.append(Problem(where, f"not an hour: date={match['date']}/hour={match['hour']}"))
            continue
        if (start and hour < start) or (end and hour > end):
            continue
        hours[prefix + match["base"], match["site"], hour][key] = size
    if start and end:
        seen = {(base, s) for base, s, _ in hours} | ({(prefix, site)} if site else set())
        for base, seen_site in sorted(seen):
            hour = start
            while hour <= end:
                if (base, seen_site, hour) not in hours:
                    problems.append(Problem(
                        f"s3://{bucket}/{base}site_id={seen_site}/date={hour:%Y-%m-%d}/hour={hour:%H}/",
                        "no receipt: the hour is incomplete or was never exported"))
                hour += timedelta(hours=1)
    for (base, hour_site, hour), listed in sorted(hours.items()):
        hour_prefix = f"{base}site_id={hour_site}/date={hour:%Y-%m-%d}/hour={hour:%H}/"
        problems += verify_hour(client, bucket, hour_prefix, listed, hour_site, hour)
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
    periods: dict[str, tuple[str, str]] = {}
    for dataset in datasets or ("",):
        search = f"{prefix}{ANALYTICS_DIR}{dataset + '/' if dataset else ''}"
        if dataset and site:
            search += f"site_id={site}/"
        for key, size in _listing(client, bucket, search).items():
            match = _DAY_KEY.match(key)
            if not match or match["base"] != prefix or (site and match["site"] != site):
                continue
            days[key[: -len(match["name"])]][key] = size
            periods[key[: -len(match["name"])]] = (match["site"], match["date"])
    problems: list[Problem] = []
    for day_prefix, listed in sorted(days.items()):
        day_site, day = periods[day_prefix]
        problems += _verify_folder(client, bucket, day_prefix, listed, day_site, ("date", day))
    return len(days), problems
