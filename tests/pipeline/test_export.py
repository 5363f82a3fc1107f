"""hourly_export against the real PostgreSQL and SeaweedFS, as a data engineer would see it."""

import io
from datetime import timedelta

import pyarrow.parquet as pq
import pytest

from pipeline.export_files import EXPORT_SCHEMA
from tests.pipeline.conftest import (
    closed_hour,
    materialize_export,
    partition_key,
    seed_events,
    with_settings,
)

COLUMNS = ", ".join(
    f"{name}::text" if name in ("event_id", "ip_address", "raw_event_data") else f'"{name}"'
    for name in EXPORT_SCHEMA.names)


def objects(s3, bucket, prefix=""):
    """The data files (not the receipts, tested in test_receipts.py) under a prefix, with ETags."""
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return {item["Key"]: item["ETag"] for item in listing.get("Contents", [])
            if not item["Key"].endswith("/_receipt.json")}


def read_rows(s3, bucket, keys):
    rows = []
    for key in sorted(keys):
        table = pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))
        assert table.schema.equals(EXPORT_SCHEMA, check_metadata=False)
        rows += [tuple(r.values()) for r in table.to_pylist()]
    return sorted(rows)


def db_rows(db, start, end, site=None):
    query = f"SELECT {COLUMNS} FROM events_log WHERE created_at >= %s AND created_at < %s"
    params = [start, end]
    if site:
        query += " AND site_id = %s"
        params.append(site)
    return sorted(db.execute(query, params).fetchall())


def check_results(result):
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def test_three_sites_three_hours_land_at_their_keys_and_read_back_exactly(resources, db, s3, buckets):
    own_bucket = f"{buckets['client']}-own"
    s3.create_bucket(Bucket=own_bucket)
    db.execute("INSERT INTO sites (site_id, client_bucket, client_prefix) VALUES ('alpha', %s, 'exports/')",
               (own_bucket,))
    hours = [closed_hour(5), closed_hour(4), closed_hour(3)]
    for n, hour in enumerate(hours):
        seed_events(db, hour, "alpha", 40 + n)
        seed_events(db, hour, "beta", 25 + n)
        seed_events(db, hour, "gamma", 10 + n)
    for hour in hours:
        result = materialize_export(resources, partition=partition_key(hour))
        assert result.success
        assert check_results(result) == {"export_reconciles": True, "no_cross_tenant_rows": True, "receipts_match": True}
        [materialization] = result.asset_materializations_for_node("hourly_export")
        assert materialization.metadata["rows"].value == db.execute(
            "SELECT count(*) FROM events_log WHERE created_at >= %s AND created_at < %s",
            (hour, hour + timedelta(hours=1))).fetchone()[0]
        assert materialization.metadata["sites"].value == 3
        assert "| alpha |" in materialization.metadata["rows_per_site"].value

    def key(site, hour, prefix=""):
        return f"{prefix}site_id={site}/date={hour:%Y-%m-%d}/hour={hour:%H}/part-00000.parquet"

    assert set(objects(s3, own_bucket)) == {key("alpha", h, "exports/") for h in hours}
    assert set(objects(s3, buckets["client"])) == {key(s, h) for s in ("beta", "gamma") for h in hours}
    assert set(objects(s3, buckets["backup"])) == {key(s, h) for s in ("alpha", "beta", "gamma") for h in hours}

    # Column by column, the client's files are exactly events_log for those hours.
    start, end = hours[0], hours[-1] + timedelta(hours=1)
    assert read_rows(s3, own_bucket, objects(s3, own_bucket)) == db_rows(db, start, end, "alpha")
    client_keys = objects(s3, buckets["client"])
    assert read_rows(s3, buckets["client"], client_keys) == sorted(
        db_rows(db, start, end, "beta") + db_rows(db, start, end, "gamma"))
    assert read_rows(s3, buckets["backup"], objects(s3, buckets["backup"])) == db_rows(db, start, end)

    ledger = db.execute("SELECT count(*), sum(rows), bool_and(verified_at IS NOT NULL) FROM export_hours").fetchone()
    assert ledger == (3, sum(40 + n + 25 + n + 10 + n for n in range(3)), True)
    assert {r[0] for r in db.execute("SELECT site_id FROM sites")} == {"alpha", "beta", "gamma"}


def test_hive_dataset_read_gives_the_rows(resources, db, s3, buckets, tmp_path):
    import pyarrow.dataset as ds

    hour = closed_hour(3)
    seed_events(db, hour, "beta", 30)
    assert materialize_export(resources, partition=partition_key(hour)).success
    for key in objects(s3, buckets["client"]):
        target = tmp_path / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(s3.get_object(Bucket=buckets["client"], Key=key)["Body"].read())
    dataset = ds.dataset(tmp_path, format="parquet", partitioning="hive")
    table = dataset.to_table(filter=(ds.field("hour") == int(f"{hour:%H}")))
    assert table.num_rows == 30
    assert set(table.column("event_type").to_pylist()) == {"pageview", "click"}


def test_rerun_leaves_the_same_objects_with_the_same_content(resources, db, s3, buckets):
    hour = closed_hour(4)
    seed_events(db, hour, "beta", 50)
    assert materialize_export(resources, partition=partition_key(hour)).success
    first = objects(s3, buckets["client"]) | {f"backup:{k}": v for k, v in objects(s3, buckets["backup"]).items()}
    # A file a failed earlier run left behind under the hour is removed by the re-run.
    stray = f"site_id=beta/date={hour:%Y-%m-%d}/hour={hour:%H}/part-00009.parquet"
    s3.put_object(Bucket=buckets["client"], Key=stray, Body=b"left over")
    assert materialize_export(resources, partition=partition_key(hour)).success
    second = objects(s3, buckets["client"]) | {f"backup:{k}": v for k, v in objects(s3, buckets["backup"]).items()}
    assert second == first  # same keys, same ETags: byte-for-byte the same files
    assert db.execute("SELECT count(*) FROM export_manifest").fetchone()[0] == 1


def test_an_hour_within_its_grace_period_is_refused_and_nothing_is_written(resources, db, s3, buckets):
    # Dagster offers no partition for the current hour; the last hour is still open during
    # the grace period (here 120 minutes, so the test does not depend on the clock).
    just_ended = closed_hour(1)
    seed_events(db, just_ended, "beta", 5)
    patient = with_settings(resources, export_grace_minutes=120)
    result = materialize_export(patient, partition=partition_key(just_ended))
    assert not result.success
    message = str(result.failure_data_for_node("hourly_export").error)
    assert "is not closed yet" in message and "PIXELPIPE_EXPORT_GRACE_MINUTES" in message
    assert objects(s3, buckets["client"]) == {} and objects(s3, buckets["backup"]) == {}
    assert db.execute("SELECT count(*) FROM export_hours").fetchone()[0] == 0


def test_a_purged_hour_is_refused_and_its_files_stay(resources, db, s3, buckets):
    hour = closed_hour(30)
    seed_events(db, hour, "beta", 20)
    assert materialize_export(resources, partition=partition_key(hour)).success
    before = objects(s3, buckets["client"])
    db.execute("DELETE FROM events_log")
    db.execute("UPDATE export_hours SET purged_at = now()")
    result = materialize_export(resources, partition=partition_key(hour))
    assert not result.success
    message = str(result.failure_data_for_node("hourly_export").error)
    assert f"{hour:%Y-%m-%d %H}:00" in message and "PIXELPIPE_RETENTION_HOURS" in message
    assert objects(s3, buckets["client"]) == before


def test_rows_gone_without_retention_is_refused_too(resources, db, s3, buckets):
    hour = closed_hour(6)
    seed_events(db, hour, "beta", 20)
    assert materialize_export(resources, partition=partition_key(hour)).success
    before = objects(s3, buckets["backup"])
    db.execute("DELETE FROM events_log")
    result = materialize_export(resources, partition=partition_key(hour))
    assert not result.success
    assert "refuses to replace" in str(result.failure_data_for_node("hourly_export").error)
    assert objects(s3, buckets["backup"]) == before


def test_a_failed_upload_fails_the_run_writes_no_manifest_and_a_rerun_completes(resources, db, s3, buckets):
    hour = closed_hour(3)
    seed_events(db, hour, "beta", 20)
    missing_backup = f"{buckets['backup']}-later"
    broken = with_settings(resources, backup_bucket=missing_backup)
    result = materialize_export(broken, partition=partition_key(hour))
    assert not result.success  # the client copy went up, the backup copy failed half-way
    assert db.execute("SELECT count(*) FROM export_hours").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM export_manifest").fetchone()[0] == 0
    s3.create_bucket(Bucket=missing_backup)
    result = materialize_export(broken, partition=partition_key(hour))
    assert result.success and all(check_results(result).values())
    assert len(objects(s3, missing_backup)) == 1
    assert db.execute("SELECT rows FROM export_hours").fetchone()[0] == 20


def test_an_unreachable_s3_fails_the_run_and_writes_no_manifest(resources, db):
    from dagster_aws.s3 import S3Resource

    from pixelpipe.process import free_port

    hour = closed_hour(3)
    seed_events(db, hour, "beta", 5)
    dead = {**resources, "s3": S3Resource(endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=1,
                                          aws_access_key_id="x", aws_secret_access_key="x")}
    assert not materialize_export(dead, partition=partition_key(hour)).success
    assert db.execute("SELECT count(*) FROM export_hours").fetchone()[0] == 0


def test_an_exported_hour_is_sealed_against_late_rows(resources, db):
    import psycopg

    hour = closed_hour(3)
    seed_events(db, hour, "beta", 4)
    assert materialize_export(resources, partition=partition_key(hour)).success
    with pytest.raises(psycopg.errors.CheckViolation, match="sealed"):
        seed_events(db, hour, "beta", 1)
    assert db.execute("SELECT count(*) FROM events_log").fetchone()[0] == 4
    # Re-exporting a sealed hour still works and writes the same rows.
    assert materialize_export(resources, partition=partition_key(hour)).success
    assert db.execute("SELECT rows FROM export_hours").fetchone()[0] == 4


def test_late_events_are_exported_in_their_ingest_hour(resources, db, s3, buckets):
    hour = closed_hour(3)
    seed_events(db, hour, "beta", 10, event_time=hour - timedelta(hours=7))
    assert materialize_export(resources, partition=partition_key(hour)).success
    [key] = objects(s3, buckets["client"])
    assert f"hour={hour:%H}" in key
    rows = read_rows(s3, buckets["client"], [key])
    assert len(rows) == 10


def test_an_empty_hour_is_recorded_as_exported_with_zero_rows(resources, db, s3, buckets):
    hour = closed_hour(3)
    result = materialize_export(resources, partition=partition_key(hour))
    assert result.success and all(check_results(result).values())
    assert db.execute("SELECT rows, sites, verified_at IS NOT NULL FROM export_hours").fetchone() == (0, 0, True)
    assert objects(s3, buckets["client"]) == {}


def test_a_site_split_into_several_files_keeps_every_row(resources, db, s3, buckets):
    hour = closed_hour(3)
    seed_events(db, hour, "beta", 25)
    small_files = with_settings(resources, rows_per_file=10)
    assert materialize_export(small_files, partition=partition_key(hour)).success
    keys = sorted(objects(s3, buckets["client"]))
    assert [k.rsplit("/", 1)[1] for k in keys] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert read_rows(s3, buckets["client"], keys) == db_rows(db, hour, hour + timedelta(hours=1))


def test_cross_tenant_object_fails_the_check_and_unverifies_the_hour(resources, db, s3, buckets):
    from pipeline.verification import verify_tenants

    hour = closed_hour(3)
    seed_events(db, hour, "beta", 5)
    seed_events(db, hour, "gamma", 5)
    result = materialize_export(resources, partition=partition_key(hour))
    assert check_results(result)["no_cross_tenant_rows"]
    # Someone copies gamma's file under beta's prefix after the export.
    gamma_key = f"site_id=gamma/date={hour:%Y-%m-%d}/hour={hour:%H}/part-00000.parquet"
    beta_stray = f"site_id=beta/date={hour:%Y-%m-%d}/hour={hour:%H}/part-00001.parquet"
    s3.copy_object(Bucket=buckets["client"], Key=beta_stray,
                   CopySource={"Bucket": buckets["client"], "Key": gamma_key})
    objects_checked, offenders = verify_tenants(db, s3, [hour])
    assert objects_checked == 3
    assert offenders == [f"s3://{buckets['client']}/{beta_stray} row group 0: site_id gamma..gamma"]
    assert db.execute("SELECT verified_at FROM export_hours").fetchone()[0] is None


def test_the_tenant_check_covers_the_prefix_an_hour_was_written_under_after_a_prefix_change(
        resources, db, s3, buckets):
    from pipeline.verification import verify_tenants

    hour = closed_hour(3)
    db.execute("INSERT INTO sites (site_id, client_prefix) VALUES ('beta', 'old/')")
    seed_events(db, hour, "beta", 5)
    seed_events(db, hour, "gamma", 5)
    assert check_results(materialize_export(resources, partition=partition_key(hour)))["no_cross_tenant_rows"]
    db.execute("UPDATE sites SET client_prefix = 'new/' WHERE site_id = 'beta'")
    gamma_key = f"site_id=gamma/date={hour:%Y-%m-%d}/hour={hour:%H}/part-00000.parquet"
    stray = f"old/site_id=beta/date={hour:%Y-%m-%d}/hour={hour:%H}/part-00009.parquet"
    s3.copy_object(Bucket=buckets["client"], Key=stray, CopySource={"Bucket": buckets["client"], "Key": gamma_key})
    _, offenders = verify_tenants(db, s3, [hour], buckets["client"])
    assert offenders == [f"s3://{buckets['client']}/{stray} row group 0: site_id gamma..gamma"]
    assert db.execute("SELECT verified_at FROM export_hours").fetchone()[0] is None
    # Re-exported under the new prefix, the hour leaves nothing at the old one: no duplicates.
    assert all(check_results(materialize_export(resources, partition=partition_key(hour))).values())
    assert not [k for k in objects(s3, buckets["client"]) if k.startswith("old/")]
    assert [k for k in objects(s3, buckets["client"]) if k.startswith("new/")] == [
        f"new/site_id=beta/date={hour:%Y-%m-%d}/hour={hour:%H}/part-00000.parquet"]


def test_a_reexport_unverifies_the_hour_before_touching_any_object(resources, db, s3, buckets):
    hour = closed_hour(3)
    seed_events(db, hour, "beta", 6)
    assert all(check_results(materialize_export(resources, partition=partition_key(hour))).values())
    assert db.execute("SELECT verified_at FROM export_hours").fetchone()[0] is not None
    # The re-export dies on its first upload (its backup bucket is missing).
    broken = with_settings(resources, backup_bucket=f"{buckets['backup']}-missing", rows_per_file=2)
    assert not materialize_export(broken, partition=partition_key(hour)).success
    assert db.execute("SELECT verified_at FROM export_hours").fetchone()[0] is None
    assert db.execute("SELECT count(*) FROM export_manifest WHERE verified_at IS NOT NULL").fetchone()[0] == 0


def test_reconciliation_fails_when_an_object_lost_rows(resources, db, s3, buckets):
    from pipeline.verification import reconcile

    hour = closed_hour(3)
    seed_events(db, hour, "beta", 8)
    assert check_results(materialize_export(resources, partition=partition_key(hour)))["export_reconciles"]
    key = f"site_id=beta/date={hour:%Y-%m-%d}/hour={hour:%H}/part-00000.parquet"
    table = pq.read_table(io.BytesIO(s3.get_object(Bucket=buckets["backup"], Key=key)["Body"].read()))
    truncated = io.BytesIO()
    pq.write_table(table.slice(0, 5), truncated)
    s3.put_object(Bucket=buckets["backup"], Key=key, Body=truncated.getvalue())
    totals, mismatches = reconcile(db, s3, [hour])
    assert totals == {"postgres": 8, "manifest": 8, "client": 8, "backup": 5}
    assert len(mismatches) == 1 and "| beta | 8 | 8 | 8 | 5 |" in mismatches[0]
    assert db.execute("SELECT reconciled_at, verified_at FROM export_hours").fetchone() == (None, None)


@pytest.mark.parametrize("hours", [24])
def test_a_partition_range_backfill_exports_every_hour(resources, db, s3, buckets, hours):
    first = closed_hour(hours + 2)
    for n in range(hours):
        seed_events(db, first + timedelta(hours=n), "beta", 3)
    last = first + timedelta(hours=hours - 1)
    result = materialize_export(resources, start=partition_key(first), end=partition_key(last))
    assert result.success
    assert all(check_results(result).values())
    assert len(objects(s3, buckets["client"])) == hours
    assert db.execute("SELECT count(*), sum(rows) FROM export_hours WHERE verified_at IS NOT NULL").fetchone() == (hours, 3 * hours)


def test_a_resent_event_is_exported_once_within_and_across_hours_and_still_once_after_a_purge(
        resources, db, s3, buckets):
    earlier, hour = closed_hour(4), closed_hour(3)
    seed_events(db, earlier, "resent", 3)
    seed_events(db, hour, "resent", 4)
    seed_events(db, hour, "other-tenant", 1)
    first = db.execute("SELECT id, event_id FROM events_log WHERE created_at >= %s AND created_at < %s "
                       "ORDER BY id", (earlier, hour)).fetchall()
    later = [i for (i,) in db.execute("SELECT id FROM events_log WHERE site_id = 'resent' AND "
                                      "created_at >= %s ORDER BY id", (hour,))]
    # A client re-sends an event of the earlier hour, and another twice within the hour; a
    # different site happens to use an id the first site used: that is not a duplicate.
    db.execute("UPDATE events_log SET event_id = %s WHERE id = %s", (first[0][1], later[0]))
    db.execute("UPDATE events_log SET event_id = (SELECT event_id FROM events_log WHERE id = %s) "
               "WHERE id = %s", (later[1], later[2]))
    db.execute("UPDATE events_log SET event_id = %s WHERE site_id = 'other-tenant'", (first[1][1],))

    for exported in (earlier, hour):
        result = materialize_export(resources, partition=partition_key(exported))
        assert check_results(result) == {"export_reconciles": True, "no_cross_tenant_rows": True, "receipts_match": True}
    prefix = f"site_id=resent/date={hour:%Y-%m-%d}/hour={hour:%H}/"
    kept = read_rows(s3, buckets["client"], objects(s3, buckets["client"], prefix))
    assert sorted(r[0] for r in kept) == [later[1], later[3]]  # the first copy of each event only
    assert len(read_rows(s3, buckets["client"], objects(s3, buckets["client"], "site_id=other-tenant/"))) == 1
    before = objects(s3, buckets["client"], prefix)

    # The earlier hour's rows are gone (as after retention): a re-export is still byte-identical.
    db.execute("DELETE FROM events_log WHERE created_at >= %s AND created_at < %s", (earlier, hour))
    result = materialize_export(resources, partition=partition_key(hour))
    assert check_results(result) == {"export_reconciles": True, "no_cross_tenant_rows": True, "receipts_match": True}
    assert objects(s3, buckets["client"], prefix) == before  # same ETags: same bytes
