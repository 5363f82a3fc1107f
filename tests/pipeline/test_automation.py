"""Schedules request the right partitions; failures are announced; definitions load."""

import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer

import dagster as dg

from pipeline.definitions import defs
from pipeline.defs.alerts.sensors import run_failure_alert
from pipeline.resources import PipelineSettings


def tick(name: str, when: datetime):
    schedule = defs.resolve_schedule_def(name)
    context = dg.build_schedule_context(scheduled_execution_time=when)
    return schedule.evaluate_tick(context).run_requests


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)
    assert {"hourly_export", "retention_cleanup", "db_maintenance", "monthly_billing"} <= {
        key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}


def test_export_schedule_runs_the_hour_that_just_closed():
    [request] = tick("hourly_export_job_schedule", datetime(2026, 11, 24, 5, 10, tzinfo=UTC))
    assert request.partition_key == "2026-11-24-04:00"


def test_billing_schedule_runs_the_month_that_ended():
    [request] = tick("billing_job_schedule", datetime(2026, 12, 1, 2, 0, tzinfo=UTC))
    assert request.partition_key == "2026-11-01"


def test_retention_and_maintenance_schedules():
    assert defs.resolve_schedule_def("retention_schedule").cron_schedule == "40 * * * *"
    assert defs.resolve_schedule_def("maintenance_schedule").cron_schedule == "15 3 * * *"
    assert len(tick("retention_schedule", datetime(2026, 11, 24, 5, 40, tzinfo=UTC))) == 1
    assert len(tick("maintenance_schedule", datetime(2026, 11, 24, 3, 15, tzinfo=UTC))) == 1


def test_a_failed_run_posts_an_alert_to_the_webhook():
    received = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    @dg.op
    def explode():
        raise RuntimeError("the bucket is gone")

    @dg.job
    def doomed():
        explode()

    instance = dg.DagsterInstance.ephemeral()
    result = doomed.execute_in_process(instance=instance, raise_on_error=False)
    failure = next(e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE")
    context = dg.build_run_status_sensor_context(
        sensor_name="run_failure_alert", dagster_instance=instance, dagster_run=result.dagster_run,
        dagster_event=failure,
        resources={"settings": PipelineSettings(alert_webhook_url=f"http://127.0.0.1:{server.server_port}/hook")},
    ).for_run_failure()
    try:
        run_failure_alert(context)
    finally:
        server.shutdown()
    [alert] = received
    assert alert["job"] == "doomed" and alert["run_id"] == result.run_id
    assert "doomed" in alert["text"] and "explode" in alert["error"]
