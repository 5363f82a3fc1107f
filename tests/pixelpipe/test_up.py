"""`pixelpipe up` as an evaluator runs it: events in, an hour exported through Dagster, clean stop."""

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import boto3
import httpx
import psutil
import psycopg
from dagster_graphql import DagsterGraphQLClient

from pixelpipe.embedded_postgres import EmbeddedPostgres
from pixelpipe.process import free_port


def _env(home, ports):
    return {**{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PIXELPIPE_S3_ENDPOINT")},
            "PIXELPIPE_HOME": str(home),
            "PIXELPIPE_COLLECTOR_PORT": str(ports["collector"]),
            "PIXELPIPE_DAGSTER_PORT": str(ports["dagster"]),
            "PIXELPIPE_POSTGRES_PORT": str(ports["postgres"]),
            "PIXELPIPE_S3_PORT": str(ports["s3"])}


def _processes_of(home):
    found = []
    for proc in psutil.process_iter(["cmdline", "environ", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            text = " ".join(proc.info["cmdline"] or []) + " ".join(
                f"{k}={v}" for k, v in (proc.info["environ"] or {}).items())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if str(home) in text:
            found.append(proc)
    return found


def test_up_ingests_exports_through_dagster_and_stops_cleanly(state_dir):
    home = state_dir / "up-home"
    ports = {name: free_port() for name in ("collector", "dagster", "postgres", "s3")}
    up = subprocess.Popen([sys.executable, "-m", "pixelpipe.cli", "up"], env=_env(home, ports),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    collector = f"http://127.0.0.1:{ports['collector']}"
    try:
        started = time.monotonic()
        banner = []
        for line in up.stdout:  # the banner is printed once every service answers
            banner.append(line)
            if "Press Ctrl-C" in line:
                break
        assert "Press Ctrl-C" in "".join(banner), "".join(banner)
        # The stores ask for generated credentials, kept 0600 under PIXELPIPE_HOME, never printed.
        password = (home / "postgres" / "password").read_text().strip()
        s3_keys = json.loads((home / "s3" / "credentials.json").read_text())
        for secret in (home / "postgres" / "password", home / "s3" / "credentials.json"):
            assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert password not in "".join(banner) and s3_keys["secret_key"] not in "".join(banner)
        assert "postgres:***@" in "".join(banner)
        database_url = f"postgresql://postgres:{password}@127.0.0.1:{ports['postgres']}/pixelpipe"
        assert time.monotonic() - started < 90
        assert httpx.get(f"{collector}/healthz").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{ports['dagster']}/server_info").status_code == 200

        # Events ingested earlier (a closed hour), written as the collector would have.
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                """INSERT INTO events_log (event_type, site_id, "timestamp", raw_event_data, created_at)
                   SELECT 'pageview', 'site-' || (n %% 2), %s, jsonb_build_object('n', n), %s
                   FROM generate_series(1, 40) n""", (hour, hour + timedelta(minutes=30)))
        # Events posted now, through the collector.
        acknowledged = [
            httpx.post(f"{collector}/collect", json={"eventType": "click", "siteId": "live", "n": n},
                       headers={"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0"}).status_code
            for n in range(20)]
        assert acknowledged == [200] * 20

        client = DagsterGraphQLClient("127.0.0.1", port_number=ports["dagster"])
        run_id = client.submit_job_execution("hourly_export_job", tags={"dagster/partition": f"{hour:%Y-%m-%d-%H:%M}"})
        deadline = time.monotonic() + 120
        while (status := client.get_run_status(run_id).value) not in ("SUCCESS", "FAILURE", "CANCELED"):
            assert time.monotonic() < deadline, status
            time.sleep(0.5)
        assert status == "SUCCESS"

        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{ports['s3']}", region_name="us-east-1",
                          aws_access_key_id=s3_keys["access_key"], aws_secret_access_key=s3_keys["secret_key"])
        keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="pixelpipe-clients")["Contents"])
        assert keys == [f"site_id=site-{n}/date={hour:%Y-%m-%d}/hour={hour:%H}/{name}"
                        for n in (0, 1) for name in ("_receipt.json", "part-00000.parquet")]
    finally:
        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0
    deadline = time.monotonic() + 10
    while _processes_of(home) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_of(home) == []
    for port in ports.values():
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, port
    # Data persists under PIXELPIPE_HOME: nothing acknowledged was lost.
    with EmbeddedPostgres(home / "postgres" / "data", free_port()) as server, \
            psycopg.connect(server.url()) as conn:
        assert conn.execute("SELECT count(*) FROM events_log WHERE site_id = 'live'").fetchone()[0] == 20


def test_up_with_a_taken_port_names_the_port_and_the_setting(state_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        ports = {name: free_port() for name in ("dagster", "postgres", "s3")}
        ports["collector"] = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "pixelpipe.cli", "up"], env=_env(state_dir / "taken", ports),
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"Port {ports['collector']}" in result.stderr
    assert "PIXELPIPE_COLLECTOR_PORT" in result.stderr
    assert "Traceback" not in result.stderr
