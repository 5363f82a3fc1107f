"""Who hears about a failed run: the log, and a webhook when one is configured."""

import json
import urllib.request

import dagster as dg

from pipeline.resources import PipelineSettings


def alert_payload(context: dg.RunFailureSensorContext) -> dict:
    run = context.dagster_run
    return {
        "text": f"pixelpipe: run {run.run_id[:8]} of {run.job_name} failed",
        "run_id": run.run_id,
        "job": run.job_name,
        "partition": run.tags.get("dagster/partition")
        or run.tags.get("dagster/asset_partition_range_start"),
        "error": context.failure_event.message,
    }


@dg.run_failure_sensor(
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Logs every failed run and, when PIXELPIPE_ALERT_WEBHOOK_URL is set, POSTs a short "
    "JSON alert to it (Slack-compatible `text` field).",
)
def run_failure_alert(context: dg.RunFailureSensorContext, settings: PipelineSettings) -> None:
    payload = alert_payload(context)
    context.log.error(f"{payload['text']}: {payload['error']}")
    if not settings.alert_webhook_url:
        return
    request = urllib.request.Request(settings.alert_webhook_url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()
