"""monthly_billing: hand-computed statements, exact after retention, idempotent."""

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import dagster as dg
import orjson
import pytest

from pipeline.defs.billing.assets import (
    billing_matches_manifest,
    monthly_billing,
    refuse_unfinished_month,
)
from pipeline.defs.retention.assets import apply_retention
from pixelpipe.core.events_log import ensure_partitions
from pixelpipe.core.statements import amount_for
from tests.pipeline.conftest import materialize_export, partition_key, verify

SEP, OCT = datetime(2026, 9, 1, tzinfo=UTC), datetime(2026, 10, 1, tzinfo=UTC)
LAST_SEP_HOUR, FIRST_OCT_HOUR = datetime(2026, 9, 30, 23, tzinfo=UTC), OCT
END_OF_SEP = datetime(2026, 9, 30, 23, 59, 59, 999000, tzinfo=UTC)


def test_rounding_rule_is_half_up_to_the_cent():
    rate = Decimal("0.01")
    assert amount_for(1500, rate) == (Decimal("0.015"), Decimal("0.02"))
    assert amount_for(1499, rate) == (Decimal("0.01499"), Decimal("0.01"))
    assert amount_for(1, rate) == (Decimal("0.00001"), Decimal("0.00"))
    assert amount_for(200_000_000, rate) == (Decimal("2000"), Decimal("2000.00"))


def _insert(db, site, created_at, count):
    with db.cursor() as cur, cur.copy(
            'COPY events_log (event_type, site_id, "timestamp", raw_event_data, created_at) FROM STDIN') as copy:
        for i in range(count):
            copy.write_row(("pageview", site, created_at, orjson.dumps({"eventType": "pageview", "i": i}).decode(),
                            created_at))


def _bill(resources, month):
    return dg.materialize([monthly_billing, billing_matches_manifest], partition_key=month,
                          resources=resources, raise_on_error=False)


def _statement(db, month):
    return db.execute("SELECT site_id, events, amount_usd, new_site FROM billing_statements "
                      "WHERE billing_month = %s ORDER BY site_id", (month,)).fetchall()


@pytest.fixture
def two_months_exported(resources, db):
    """Two sites across the September/October boundary, every hour of both months exported."""
    ensure_partitions(db, now=LAST_SEP_HOUR, hours_back=0, hours_ahead=2)
    _insert(db, "alpha", END_OF_SEP, 1500)                      # Sep: $0.015 -> $0.02
    _insert(db, "beta", END_OF_SEP, 1)                          # Sep: $0.00001 -> $0.00
    _insert(db, "alpha", FIRST_OCT_HOUR, 2499)                  # Oct: $0.02499 -> $0.02
    _insert(db, "beta", FIRST_OCT_HOUR, 150_000)                # Oct: $1.50
    for hour in (LAST_SEP_HOUR, FIRST_OCT_HOUR):
        result = materialize_export(resources, partition=partition_key(hour))
        assert result.success and all(e.passed for e in result.get_asset_check_evaluations())
    # Every other hour of both months was exported too, empty (the export writes 0-row hours).
    db.execute("""INSERT INTO export_hours (ingest_hour, rows, sites, files, bytes, exported_at,
                      reconciled_at, tenants_verified_at)
                  SELECT h, 0, 0, 0, 0, now(), now(), now()
                  FROM generate_series(%s::timestamptz, %s::timestamptz, interval '1 hour') h
                  ON CONFLICT DO NOTHING""", (SEP, datetime(2026, 10, 31, 23, tzinfo=UTC)))


def test_statements_across_a_month_boundary_survive_retention_and_reruns(resources, db, s3, buckets,
                                                                        two_months_exported):
    september = _bill(resources, "2026-09-01")
    october = _bill(resources, "2026-10-01")
    assert september.success and october.success
    assert all(e.passed for e in september.get_asset_check_evaluations() + october.get_asset_check_evaluations())
    expected_sep = [("alpha", 1500, Decimal("0.02"), True), ("beta", 1, Decimal("0.00"), True)]
    expected_oct = [("alpha", 2499, Decimal("0.02"), False), ("beta", 150_000, Decimal("1.50"), False)]
    assert _statement(db, SEP.date()) == expected_sep
    assert _statement(db, OCT.date()) == expected_oct
    metadata = october.asset_materializations_for_node("monthly_billing")[0].metadata
    assert metadata["events"].value == 152_499 and metadata["amount_usd"].value == 1.52
    assert "| beta | 150000 | 1.50 |" in metadata["statement"].value

    csv_body = s3.get_object(Bucket=buckets["backup"], Key="billing/month=2026-10/statement.csv")["Body"].read()
    rows = list(csv.DictReader(io.StringIO(csv_body.decode())))
    assert [(r["site_id"], r["events"], r["amount_usd"]) for r in rows] == [
        ("alpha", "2499", "0.02"), ("beta", "150000", "1.50")]
    assert s3.head_object(Bucket=buckets["backup"], Key="billing/month=2026-10/statement.parquet")

    # Retention purges the rows; billing reads the manifest, so the statement does not move.
    purged = [v for v in apply_retention(db, datetime.now(UTC), 24) if v.purged]
    assert {v.hour for v in purged} == {LAST_SEP_HOUR, FIRST_OCT_HOUR}
    assert db.execute("SELECT count(*) FROM events_log").fetchone()[0] == 0
    assert _bill(resources, "2026-10-01").success and _bill(resources, "2026-09-01").success
    assert _statement(db, SEP.date()) == expected_sep
    assert _statement(db, OCT.date()) == expected_oct
    assert db.execute("SELECT count(*) FROM billing_statements").fetchone()[0] == 4


def test_a_month_with_unexported_hours_is_refused_with_the_missing_hours(resources, db):
    db.execute("""INSERT INTO export_hours (ingest_hour, rows, sites, files, bytes, exported_at)
                  SELECT h, 0, 0, 0, 0, now()
                  FROM generate_series(%s::timestamptz, %s::timestamptz, interval '1 hour') h
                  WHERE h NOT IN ('2026-09-10 04:00+00', '2026-09-10 05:00+00', '2026-09-20 13:00+00')""",
               (SEP, OCT - timedelta(hours=1)))
    result = _bill(resources, "2026-09-01")
    assert not result.success
    message = str(result.failure_data_for_node("monthly_billing").error)
    assert "3 hours are not exported: 2026-09-10 04:00..2026-09-10 05:00, 2026-09-20 13:00" in message
    assert db.execute("SELECT count(*) FROM billing_statements").fetchone()[0] == 0


def test_a_month_with_unverified_hours_is_refused_with_those_hours(resources, db):
    db.execute("""INSERT INTO export_hours (ingest_hour, rows, sites, files, bytes, exported_at,
                      reconciled_at, tenants_verified_at)
                  SELECT h, 0, 0, 0, 0, now(), now(),
                         CASE WHEN h IN ('2026-09-03 07:00+00', '2026-09-03 08:00+00') THEN NULL ELSE now() END
                  FROM generate_series(%s::timestamptz, %s::timestamptz, interval '1 hour') h""",
               (SEP, OCT - timedelta(hours=1)))
    result = _bill(resources, "2026-09-01")
    assert not result.success
    message = str(result.failure_data_for_node("monthly_billing").error)
    assert "2 hours are exported but not verified: 2026-09-03 07:00..2026-09-03 08:00" in message
    assert db.execute("SELECT count(*) FROM billing_statements").fetchone()[0] == 0


def test_a_month_is_billable_only_once_its_last_hour_can_be_exported():
    nov, dec = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
    with pytest.raises(dg.Failure, match="bill it from 2026-12-01 01:05 UTC"):
        refuse_unfinished_month(nov, dec, datetime(2026, 12, 1, 0, 30, tzinfo=UTC), 5)
    refuse_unfinished_month(nov, dec, datetime(2026, 12, 1, 1, 5, tzinfo=UTC), 5)
    # The running month is not even a partition Dagster offers.
    from pipeline.partitions import monthly_partitions

    this_month = datetime.now(UTC).strftime("%Y-%m-01")
    assert this_month not in monthly_partitions.get_partition_keys()


def test_the_clients_statement_is_recomputed_from_its_receipts_to_the_cent(resources, db, s3, s3_server, buckets,
                                                                          two_months_exported):
    assert _bill(resources, "2026-10-01").success
    key = "billing/month=2026-10/statement.json"
    statement = orjson.loads(s3.get_object(Bucket=buckets["client"], Key=key)["Body"].read())
    assert [(s["site_id"], s["hours"], s["events"], s["amount_usd"]) for s in statement["sites"]] == [
        ("alpha", 1, 2499, "0.02"), ("beta", 1, 150_000, "1.50")]
    assert statement["total_usd"] == "1.52" and statement["rate_per_1000_events"] == "0.01"

    agreed = verify(s3_server, f"s3://{buckets['client']}", "--billing", "2026-10")
    assert agreed.returncode == 0, agreed.stdout + agreed.stderr
    assert "2 sites of the 2026-10 statement checked" in agreed.stderr

    # An invoice that claims more than the receipts hold is caught, to the cent.
    statement["sites"][1]["events"], statement["sites"][1]["amount_usd"] = 151_000, "1.51"
    s3.put_object(Bucket=buckets["client"], Key=key, Body=orjson.dumps(statement))
    caught = verify(s3_server, f"s3://{buckets['client']}", "--billing", "2026-10")
    assert caught.returncode == 1
    assert caught.stdout.splitlines() == [
        f"s3://{buckets['client']}/{key} beta: events is 151000, the receipts give 150000",
        f"s3://{buckets['client']}/{key} beta: amount_usd is 1.51, the receipts give 1.50",
        f"s3://{buckets['client']}/{key}: total_usd is 1.52, its lines add up to 1.53"]
