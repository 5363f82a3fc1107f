"""Monthly statements a client can recompute from the receipts in its own bucket.

`<prefix>billing/month=YYYY-MM/statement.json` lists, for each site exported to that bucket and
prefix: the hours it rests on (its receipts of the month), their events, the rate, the amount,
and a digest of those receipts. `pixelpipe verify --billing` recomputes every figure from the
receipts alone. The rounding rule lives here, once, for the invoice and for its check.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from pixelpipe.core.receipts import RECEIPT_NAME, Problem

CENT = Decimal("0.01")


def amount_for(events: int, rate_per_1000: Decimal) -> tuple[Decimal, Decimal]:
    """(exact amount, amount rounded half-up to the cent) for a site's month.

    The rounding rule: each site's monthly amount is rounded once, half-up, to whole cents;
    the unrounded figure is kept beside it for audit.
    """
    exact = Decimal(events) * rate_per_1000 / Decimal(1000)
    return exact, exact.quantize(CENT, rounding=ROUND_HALF_UP)


def statement_key(prefix: str, month: datetime) -> str:
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return f"{prefix}billing/month={month:%Y-%m}/statement.json"


def month_receipts(client, bucket: str, prefix: str, site: str, month: datetime) -> list[bytes]:
    """The site's receipts for the month in the bucket, in hour order."""
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    keys = []
    search = f"{prefix}site_id={site}/date={month:%Y-%m}-"
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=search):
        keys += [item["Key"] for item in page.get("Contents", []) if item["Key"].endswith("/" + RECEIPT_NAME)]
    return [client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in sorted(keys)]


def site_line(site: str, receipts: list[bytes], rate_per_1000: Decimal) -> dict:
    """One site's line, from its receipts alone."""
    # Delivered events are billed, also those erased from the files since (docs/reading.md).
    events = sum(claim["rows"] + claim.get("erased_events", 0) for claim in map(json.loads, receipts))
    exact, rounded = amount_for(events, rate_per_1000)
    digests = "\n".join(hashlib.sha256(body).hexdigest() for body in receipts)
    return {"site_id": site, "hours": len(receipts), "events": events, "amount_exact": str(exact),
            "amount_usd": str(rounded), "receipts_sha256": hashlib.sha256(digests.encode()).hexdigest()}


def statement_bytes(month: datetime, rate_per_1000: Decimal, lines: list[dict]) -> bytes:
    lines = sorted(lines, key=lambda line: line["site_id"])
    total = sum((Decimal(line["amount_usd"]) for line in lines), Decimal(0))
    statement = {"month": f"{month:%Y-%m}", "currency": "USD", "rate_per_1000_events": str(rate_per_1000),
                 "rounding": "per site and month, half-up to the cent", "sites": lines,
                 "total_usd": str(total)}
    return (json.dumps(statement, indent=2, sort_keys=True) + "\n").encode()


def verify_statement(client, bucket: str, prefix: str, month: datetime) -> tuple[int, list[Problem]]:
    """Recompute the month's statement in s3://bucket/prefix from the receipts beside it.
    Returns (sites checked, problems)."""
    key = statement_key(prefix, month)
    where = f"s3://{bucket}/{key}"
    try:
        statement = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        rate = Decimal(statement["rate_per_1000_events"])
        lines = statement["sites"]
    except client.exceptions.NoSuchKey:
        return 0, [Problem(where, "no statement for this month")]
    except (ValueError, KeyError, TypeError, ArithmeticError) as error:
        return 0, [Problem(where, f"unreadable statement ({error})")]
    problems = []
    for line in lines:
        site = line.get("site_id", "?")
        recomputed = site_line(site, month_receipts(client, bucket, prefix, site, month), rate)
        for field in ("hours", "events", "amount_exact", "amount_usd", "receipts_sha256"):
            if line.get(field) != recomputed[field]:
                problems.append(Problem(f"{where} {site}", f"{field} is {line.get(field)}, the receipts give "
                                                           f"{recomputed[field]}"))
    total = sum((Decimal(line.get("amount_usd", "0")) for line in lines), Decimal(0))
    if str(total) != statement.get("total_usd"):
        problems.append(Problem(where, f"total_usd is {statement.get('total_usd')}, its lines add up to {total}"))
    return len(lines), problems
