"""How the daily analytics are rebuilt after a site's hours were rewritten (an erasure): the days
of those hours are computed again for that site, from the rewritten files in the backup bucket."""

from __future__ import annotations

from datetime import datetime

from pipeline.analytics.bucket import compute_day, read_receipts
from pipeline.analytics.daily import DATASETS
from pipeline.derived import register
from pipeline.ledger import site_destinations


@register("analytics", DATASETS)
def rebuild_days(conn, client, settings, site: str, hours: list[datetime]) -> str:
    """Only days already computed: the others are computed when their turn comes, from the
    rewritten files."""
    destinations = site_destinations(conn, settings.client_bucket)
    bucket, prefix = destinations.get(site, (settings.client_bucket, ""))
    days = [day for day in sorted({hour.date() for hour in hours})
            if read_receipts(client, bucket, prefix, site, day)]
    for day in days:
        run = compute_day(client, settings.backup_bucket,
                          lambda s: destinations.get(s, (settings.client_bucket, "")), day, sites={site})
        if run.failed:
            raise RuntimeError(f"the analytics of {site} on {day} could not be recomputed: {run.failed[site]}")
    return f"{len(days)} day(s) of {site} recomputed"
