"""`pixelpipe up --demo`'s page and what it shows: the events the collector accepted and the
requests it rejected since the page was opened, read from PostgreSQL (what is there is what
counts), so the page's "watch them arrive" has something to watch.

Only mounted with PIXELPIPE_DEMO_PAGE (set by `pixelpipe up --demo`), never in production.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Route

PAGE = Path(__file__).resolve().parent.parent / "static" / "demo.html"
# A page open for longer counts the last day: the query stays within a day of partitions.
LONGEST = timedelta(days=1)


def demo_routes(database_url: str) -> list[Route]:
    async def page(request: Request) -> FileResponse:
        return FileResponse(PAGE)

    async def stats(request: Request) -> JSONResponse:
        now = datetime.now(UTC)
        try:
            since = datetime.fromisoformat(request.query_params.get("since", ""))
        except ValueError:
            return JSONResponse({"error": "invalid_since", "detail": "since must be an ISO 8601 "
                                 "time, e.g. 2026-12-05T08:00:00Z."}, status_code=400)
        since = max(since if since.tzinfo else since.replace(tzinfo=UTC), now - LONGEST)
        return JSONResponse({"since": since.isoformat(), **await counts(database_url, since)})

    return [Route("/demo", page, methods=["GET"]), Route("/demo/stats", stats, methods=["GET"])]


async def counts(database_url: str, since: datetime) -> dict:
    """Events stored per site, and rejected requests per reason code, since `since`."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        accepted = await (await conn.execute(
            "SELECT site_id, count(*) FROM events_log WHERE created_at >= %s GROUP BY 1 ORDER BY 1",
            (since,))).fetchall()
        rejected = await (await conn.execute(
            "SELECT split_part(reason, ':', 1), count(*) FROM events_rejected WHERE received_at >= %s "
            "GROUP BY 1 ORDER BY 1", (since,))).fetchall()
    return {"accepted": sum(n for _, n in accepted), "accepted_by_site": dict(accepted),
            "rejected": sum(n for _, n in rejected), "rejected_by_reason": dict(rejected)}
