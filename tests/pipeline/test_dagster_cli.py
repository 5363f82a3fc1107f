"""Dagster's own commands (`dagster`, and `dg` of the [tool.dg] project) in a fresh copy of the
repository, beside a running local stack, with no DATABASE_URL, S3 endpoint, keys or DAGSTER_HOME set: they find the stack the way `pixelpipe up`
lays it out (PIXELPIPE_HOME and the ports), and say what to do when there is none."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

from pixelpipe.core.events_log import ensure_partitions
from pixelpipe.core.migrations import apply_migrations
from pixelpipe.process import free_port
from tests.pipeline.conftest import closed_hour, partition_key, seed_events

REPO = Path(__file__).resolve().parents[2]
DAGSTER = Path(sys.executable).parent / "dagster"
DG = Path(sys.executable).parent / "dg"
pytestmark = pytest.mark.slow


@pytest.fixture
def fresh_copy(tmp_path):
    """The repository's tracked files, as a clone has them."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / name, tmp_path / name)
    return tmp_path


def stack_env(home: Path, postgres_port: int, s3_port: int) -> dict:
    drop = ("DATABASE_URL", "PIXELPIPE_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "DAGSTER_HOME")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "PIXELPIPE_HOME": str(home),
            "PIXELPIPE_POSTGRES_PORT": str(postgres_port), "PIXELPIPE_S3_PORT": str(s3_port)}


def served_asset_keys(command: list[str], cwd: Path, env: dict, port: int) -> set[tuple[str, ...]]:
    """Start `command` (a webserver on `port`), wait until its GraphQL lists assets, stop it."""
    process = subprocess.Popen(command, cwd=cwd, start_new_session=True, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    query = json.dumps({"query": "{ assetNodes { assetKey { path } } }"}).encode()
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=query,
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=5) as response:
                    nodes = json.load(response)["data"]["assetNodes"]
                if nodes:
                    break
            except (OSError, KeyError, TypeError):
                pass
            if time.monotonic() > deadline:
                os.killpg(process.pid, signal.SIGTERM)
                pytest.fail(f"{command[0]} did not serve the asset graph:\n"
                            + process.communicate(timeout=30)[0][-5000:])
            time.sleep(0.5)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
    return {tuple(n["assetKey"]["path"]) for n in nodes}


GRAPH = {("events_log",), ("hourly_export",), ("retention_cleanup",), ("db_maintenance",), ("monthly_billing",),
         ("sessions",), ("pageviews",), ("daily_site_metrics",), ("page_performance",)}


def test_dagster_dev_in_a_fresh_copy_serves_the_asset_graph(fresh_copy, state_dir, postgres_server, s3_server):
    port = free_port()
    assert served_asset_keys([str(DAGSTER), "dev", "-p", str(port)], fresh_copy,
                             stack_env(state_dir, postgres_server.port, s3_server.port), port) >= GRAPH


def dg_env(home: Path, postgres_port: int, s3_port: int) -> dict:
    """`dg` runs the project's commands with the Python it finds first on PATH: this one."""
    env = stack_env(home, postgres_port, s3_port)
    return {**env, "PATH": f"{DG.parent}{os.pathsep}{env.get('PATH', '')}"}


def test_dg_check_defs_passes_in_a_fresh_copy(fresh_copy, state_dir, postgres_server, s3_server):
    result = subprocess.run([str(DG), "check", "defs"], cwd=fresh_copy, capture_output=True, text=True,
                            env=dg_env(state_dir, postgres_server.port, s3_server.port), timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "All definitions loaded successfully." in result.stdout + result.stderr


def test_dg_dev_in_a_fresh_copy_serves_the_asset_graph(fresh_copy, state_dir, postgres_server, s3_server):
    port = free_port()
    assert served_asset_keys([str(DG), "dev", "-p", str(port)], fresh_copy,
                             dg_env(state_dir, postgres_server.port, s3_server.port), port) >= GRAPH


def test_dagster_asset_materialize_exports_an_hour_from_the_local_stack(fresh_copy, state_dir, postgres_server,
                                                                      s3_server, s3):
    url = postgres_server.url()  # the local stack's own database, as `pixelpipe up` uses it
    apply_migrations(url)
    hour = closed_hour(3)
    with psycopg.connect(url, autocommit=True) as db:
        ensure_partitions(db, hours_back=4)
        db.execute("DELETE FROM events_log WHERE created_at >= %s AND created_at < %s + interval '1 hour'",
                   (hour, hour))
        seed_events(db, hour, "cli-site", 7)
    for bucket in ("pixelpipe-clients", "pixelpipe-backup"):
        if bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
            s3.create_bucket(Bucket=bucket)
    command = [str(DAGSTER), "asset", "materialize", "-m", "pipeline.definitions", "--select", "hourly_export",
               "--partition", partition_key(hour)]
    result = subprocess.run(command, cwd=fresh_copy, env=stack_env(state_dir, postgres_server.port, s3_server.port),
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="pixelpipe-clients").get("Contents", [])]
    assert f"site_id=cli-site/date={hour:%Y-%m-%d}/hour={hour:%H}/part-00000.parquet" in keys

    # Without a stack (an empty PIXELPIPE_HOME), the failure says what to do.
    empty = state_dir / "no-stack-here"
    empty.mkdir(exist_ok=True)
    missing = subprocess.run(command, cwd=fresh_copy, env=stack_env(empty, free_port(), free_port()),
                             capture_output=True, text=True, timeout=180)
    assert missing.returncode != 0
    assert missing.stderr.strip().splitlines()[-1] == (
        f"pixelpipe: No database: DATABASE_URL is not set and there is no local stack in {empty} "
        "(PIXELPIPE_HOME). Start one with `pixelpipe up`, or set DATABASE_URL.")
    assert "Traceback" not in missing.stdout + missing.stderr
    assert "RUN_START" not in missing.stdout + missing.stderr  # refused before any run began
