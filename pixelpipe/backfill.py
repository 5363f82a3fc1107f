"""`pixelpipe backfill --from HOUR --to HOUR`: a real Dagster backfill of hourly_export.

Submitted to the instance through the Dagster webserver's GraphQL API (what the UI's "Launch
backfill" does), so it is visible, cancellable and resumable in the UI, and the daemon splits it
into runs of at most PIXELPIPE_BACKFILL_HOURS_PER_RUN hours. Unlike
`dagster asset materialize --partition-range`, it does not tie a whole range to one process.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

from pixelpipe.core.errors import PixelpipeError

_FORMATS = ("%Y-%m-%d-%H:%M", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H", "%Y-%m-%d %H:%M", "%Y-%m-%d-%H")
_LAUNCH = """
mutation Backfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on PartitionKeysNotFoundError { message }
    ... on PartitionSetNotFoundError { message }
    ... on UnauthorizedError { message }
    ... on InvalidSubsetError { message }
  }
}
"""


def parse_hour(text: str, flag: str) -> datetime:
    """An ingest hour in UTC, as a partition key (2026-11-24-05:00) or ISO (2026-11-24T05)."""
    for pattern in _FORMATS:
        try:
            parsed = datetime.strptime(text.strip().removesuffix("Z"), pattern).replace(tzinfo=UTC)
        except ValueError:
            continue
        if parsed.minute:
            break
        return parsed
    raise PixelpipeError(f"{flag} {text!r} is not an hour: write it as 2026-11-24-05:00 (UTC, on the hour).")


def partition_keys(start: datetime, end: datetime, now: datetime, grace_minutes: int) -> list[str]:
    """The hourly partition keys from start to end inclusive, refusing what cannot be exported."""
    if end < start:
        raise PixelpipeError(f"--to {end:%Y-%m-%d-%H:%M} is before --from {start:%Y-%m-%d-%H:%M}.")
    last_closed = (now - timedelta(hours=1, minutes=grace_minutes)).replace(minute=0, second=0, microsecond=0)
    if end > last_closed:
        raise PixelpipeError(
            f"--to {end:%Y-%m-%d-%H:%M} is not closed yet: the last hour that can be exported now is "
            f"{last_closed:%Y-%m-%d-%H:%M} (an hour plus PIXELPIPE_EXPORT_GRACE_MINUTES={grace_minutes}).")
    keys, hour = [], start
    while hour <= end:
        keys.append(f"{hour:%Y-%m-%d-%H:%M}")
        hour += timedelta(hours=1)
    return keys


def submit_backfill(dagster_url: str, keys: list[str]) -> str:
    """Launch the backfill; returns its id."""
    params = {"partitionNames": keys, "assetSelection": [{"path": ["hourly_export"]}],
              "title": f"hourly_export {keys[0]} .. {keys[-1]}",
              "description": "Submitted by `pixelpipe backfill`."}
    request = urllib.request.Request(
        f"{dagster_url}/graphql", method="POST", headers={"Content-Type": "application/json"},
        data=json.dumps({"query": _LAUNCH, "variables": {"params": params}}).encode())
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.load(response)
    except (urllib.error.URLError, OSError) as error:
        raise PixelpipeError(
            f"Cannot reach the Dagster webserver at {dagster_url} ({error}). Start the stack with "
            "`pixelpipe up` (or set PIXELPIPE_DAGSTER_PORT to where its webserver listens).") from None
    if answer.get("errors"):
        raise PixelpipeError(f"Dagster refused the backfill: {answer['errors'][0].get('message')}")
    result = answer["data"]["launchPartitionBackfill"]
    if result["__typename"] != "LaunchBackfillSuccess":
        raise PixelpipeError(f"Dagster refused the backfill ({result['__typename']}): {result.get('message')}")
    return result["backfillId"]


def backfill_status(dagster_url: str, backfill_id: str) -> str:
    """The backfill's status as Dagster reports it (REQUESTED, COMPLETED, FAILED, ...)."""
    query = ('query($id: String!) { partitionBackfillOrError(backfillId: $id) { '
             '... on PartitionBackfill { status } ... on PythonError { message } } }')
    request = urllib.request.Request(
        f"{dagster_url}/graphql", method="POST", headers={"Content-Type": "application/json"},
        data=json.dumps({"query": query, "variables": {"id": backfill_id}}).encode())
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["data"]["partitionBackfillOrError"].get("status", "UNKNOWN")
