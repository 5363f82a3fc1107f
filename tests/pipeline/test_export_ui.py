"""What a data engineer sees in the Dagster UI after a run over several hours, read through the
webserver's GraphQL API: each hour's own materialization metadata and its own check status."""

import io
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest
from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

from tests.pipeline.conftest import closed_hour, partition_key, seed_events

DEFINITIONS = str(Path(__file__).resolve().parents[2] / "pipeline" / "definitions.py")

HOUR_METADATA = """
query ($keys: [String!]) {
  assetNodeOrError(assetKey: {path: ["hourly_export"]}) {
    ... on AssetNode {
      assetMaterializations(partitions: $keys) {
        partition runId
        metadataEntries { label ... on IntMetadataEntry { intValue } }
      }
    }
  }
}"""

CHECK_STATUSES = """
{
  assetNodeOrError(assetKey: {path: ["hourly_export"]}) {
    ... on AssetNode {
      assetChecksOrError {
        ... on AssetChecks {
          checks {
            name
            partitionStatuses {
              ... on AssetCheckTimePartitionStatuses { ranges { startKey endKey status } }
            }
          }
        }
      }
    }
  }
}"""


def run_range(instance, resources, first, last, selection):
    from pipeline.defs.export.assets import hourly_export
    from pipeline.defs.export.checks import hourly_export_checks
    from pipeline.defs.export.events_log import events_log

    return dg.materialize(
        [events_log, hourly_export, hourly_export_checks], instance=instance, resources=resources,
        selection=selection(hourly_export), raise_on_error=False,
        tags={"dagster/asset_partition_range_start": partition_key(first),
              "dagster/asset_partition_range_end": partition_key(last)})


def check_statuses(context) -> dict[str, dict[str, str]]:
    """check name -> {partition key: status} over the ranges the UI draws."""
    data = execute_dagster_graphql(context, CHECK_STATUSES).data
    statuses = {}
    for check in data["assetNodeOrError"]["assetChecksOrError"]["checks"]:
        by_hour = statuses.setdefault(check["name"], {})
        for status_range in check["partitionStatuses"]["ranges"]:
            start, end = status_range["startKey"], status_range["endKey"]
            by_hour.update({key: status_range["status"] for key in (start, end)})
    return statuses


@pytest.fixture
def graphql(tmp_path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance, \
            define_out_of_process_context(DEFINITIONS, "defs", instance) as context:
        yield instance, context


def test_a_three_hour_run_shows_each_hours_rows_and_check_status_with_one_failed_hour(
        graphql, resources, db, s3, buckets):
    instance, context = graphql
    first = closed_hour(5)
    hours = [first + timedelta(hours=n) for n in range(3)]
    for rows, hour in zip((5, 7, 11), hours, strict=True):
        seed_events(db, hour, "beta", rows)
    keys = [partition_key(hour) for hour in hours]

    assert run_range(instance, resources, hours[0], hours[-1],
                     lambda asset: dg.AssetSelection.assets(asset)).success
    data = execute_dagster_graphql(context, HOUR_METADATA, {"keys": keys}).data
    materializations = data["assetNodeOrError"]["assetMaterializations"]
    rows = {m["partition"]: {e["label"]: e.get("intValue") for e in m["metadataEntries"]}["rows"]
            for m in materializations}
    assert rows == dict(zip(keys, (5, 7, 11), strict=True))  # each hour its own, not the run's 23
    assert all(status == "SUCCEEDED" for check in check_statuses(context).values()
               for status in check.values())

    # The middle hour's backup copy loses rows; the checks run again over the three hours.
    key = f"site_id=beta/date={hours[1]:%Y-%m-%d}/hour={hours[1]:%H}/part-00000.parquet"
    table = pq.read_table(io.BytesIO(s3.get_object(Bucket=buckets["backup"], Key=key)["Body"].read()))
    truncated = io.BytesIO()
    pq.write_table(table.slice(0, 2), truncated)
    s3.put_object(Bucket=buckets["backup"], Key=key, Body=truncated.getvalue())
    result = run_range(instance, resources, hours[0], hours[-1],
                       lambda asset: dg.AssetSelection.checks_for_assets(asset))
    assert not result.success  # export_reconciles blocks

    statuses = check_statuses(context)
    assert statuses["export_reconciles"] == dict(zip(keys, ("SUCCEEDED", "FAILED", "SUCCEEDED"), strict=True))
    assert statuses["receipts_match"] == dict(zip(keys, ("SUCCEEDED", "FAILED", "SUCCEEDED"), strict=True))
    assert set(statuses["no_cross_tenant_rows"].values()) == {"SUCCEEDED"}
