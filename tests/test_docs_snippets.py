"""Every `sh` and `sql` block of README.md and docs/*.md, run as written against one local stack
(`pixelpipe up --demo`, tests/demo_stack.py), with its documented effect checked.

The line before each block names how (README.md, "Test it"): `<!-- docs-test: NAME -->` runs the
check NAME below; `<!-- docs-test: not here: REASON -->` marks a block that cannot run on the
local stack. A block with neither fails, so a new example cannot go untested by accident. The
only change made to a block is the default ports (8000, 3000) becoming the test stack's.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import boto3
import psycopg
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
MARKER = re.compile(r"<!--\s*docs-test:\s*(.+?)\s*-->")
RUNNABLE = ("sh", "bash", "shell", "sql")


@dataclass(frozen=True)
class Snippet:
    path: Path
    line: int
    language: str
    text: str
    marker: str | None

    def __str__(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def snippets() -> list[Snippet]:
    found = []
    for path in DOCS:
        text = path.read_text()
        for fence in FENCE.finditer(text):
            if fence.group(1) not in RUNNABLE:
                continue
            before = text[:fence.start()].rstrip("\n").rsplit("\n", 1)[-1]
            marker = MARKER.search(before)
            found.append(Snippet(path, text[:fence.start()].count("\n") + 1, fence.group(1),
                                 fence.group(2), marker.group(1) if marker else None))
    return found


ALL = snippets()


def run_shell(stack, snippet: Snippet, cwd: Path) -> subprocess.CompletedProcess:
    """The block as a user's shell runs it: `pixelpipe` on the PATH, the stack's home and ports."""
    text = snippet.text.replace("localhost:8000", f"localhost:{stack.ports['collector']}")
    text = text.replace("localhost:3000", f"localhost:{stack.ports['dagster']}")
    env = {**stack.env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", text], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)


def ran(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stdout + result.stderr
    return result.stdout


def stack_s3(stack):
    keys = json.loads((stack.home / "s3" / "credentials.json").read_text())
    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{stack.ports['s3']}", region_name="us-east-1",
                        aws_access_key_id=keys["admin_access_key"], aws_secret_access_key=keys["admin_secret_key"])


# --- the documented effects ------------------------------------------------------------------

def check_make_run(stack, snippet, tmp_path):
    """README: `make run` runs `pixelpipe up --demo`, which prints the URLs within seconds."""
    assert snippet.text.split()[:2] == ["make", "run"]
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^run: .*\n\t\$\(VENV\)/bin/pixelpipe up --demo$", makefile, re.M)
    banner = stack.banner  # the session's stack is that very command
    assert f"{stack.collector}/demo" in banner and f"Dagster UI       {stack.dagster}" in banner
    assert "demo history" in banner and "pixelpipe backfill --from" in banner


def check_send_events(stack, snippet, tmp_path):
    """README: the /collect example is accepted, the pixel answers its GIF, both are stored."""
    sent_at = datetime.now(UTC)
    answers = ran(run_shell(stack, snippet, tmp_path)).splitlines()
    assert json.loads(answers[0]) == {"accepted": 1, "rejected": 0}
    assert answers[1] == "200 image/gif"
    with psycopg.connect(stack.database_url()) as conn:
        stored = conn.execute(
            "SELECT event_type, url, raw_event_data->>'plan' FROM events_log "
            "WHERE site_id = 'shop-example-com' AND created_at >= %s ORDER BY id", (sent_at,)).fetchall()
    assert stored == [("signup", None, "pro"), ("pageview", "https://shop.example.com/cart", None)]


def check_verify(stack, snippet, tmp_path):
    """docs/reading.md: `pixelpipe verify` passes on the demo shop's exported hours."""
    assert stack.backfill_demo_hours()["status"] == "COMPLETED_SUCCESS"
    ran(run_shell(stack, snippet, tmp_path))


def check_erase(stack, snippet, tmp_path):
    """docs/reading.md: the visitor's events leave events_log and every exported file, recorded
    in `erasures`; the files still verify."""
    assert stack.backfill_demo_hours()["status"] == "COMPLETED_SUCCESS"
    erasure_id = int(ran(run_shell(stack, snippet, tmp_path)).strip())
    with psycopg.connect(stack.database_url()) as conn:
        site, rows_db, rows_files, hours, finished = conn.execute(
            "SELECT site_id, rows_in_database, rows_in_files, hours_rewritten, finished_at "
            "FROM erasures WHERE id = %s", (erasure_id,)).fetchone()
    assert site == "demo-shop" and rows_db > 0 and rows_files > 0 and hours > 0 and finished
    s3 = stack_s3(stack)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="pixelpipe-clients", Prefix="site_id=demo-shop/")
            .get("Contents", []) if o["Key"].endswith(".parquet")]
    assert keys
    for key in keys:
        table = pq.read_table(io.BytesIO(s3.get_object(Bucket="pixelpipe-clients", Key=key)["Body"].read()),
                              columns=["visitor_id"])
        assert "v42" not in table.column("visitor_id").to_pylist(), key


def check_monitoring_views(stack, snippet, tmp_path):
    """docs/schema.md: the two views answer, with the documented states."""
    assert stack.backfill_demo_hours()["status"] == "COMPLETED_SUCCESS"
    statements = [s for s in (part.strip() for part in re.sub(r"--[^\n]*", "", snippet.text).split(";")) if s]
    assert len(statements) == 2
    with psycopg.connect(stack.database_url()) as conn:
        lag = conn.execute(statements[0])
        assert [c.name for c in lag.description] == [
            "events_pending_export", "oldest_pending_hour", "export_lag", "exported_last_24h"]
        assert lag.fetchone()[3] > 0
        by_hour = conn.execute(statements[1])
        columns = [c.name for c in by_hour.description]
        states = [dict(zip(columns, row, strict=True))["state"] for row in by_hour.fetchall()]
    assert 0 < len(states) <= 48 and set(states) <= {"pending", "exported", "verified", "purged"}
    assert "verified" in states


CHECKS = {"make-run": check_make_run, "send-events": check_send_events, "verify": check_verify,
          "erase": check_erase, "monitoring-views": check_monitoring_views}


def test_every_runnable_block_is_marked_and_every_check_is_used():
    unmarked = [str(s) for s in ALL if s.marker is None]
    assert not unmarked, f"blocks without <!-- docs-test: ... --> before them: {unmarked}"
    named = {s.marker for s in ALL if not s.marker.startswith("not here:")}
    assert named == set(CHECKS), named ^ set(CHECKS)


@pytest.mark.parametrize("snippet", [s for s in ALL if s.marker and not s.marker.startswith("not here:")],
                         ids=lambda s: f"{s}:{s.marker}")
def test_the_block_does_what_the_text_says(snippet, demo_stack, tmp_path):
    CHECKS[snippet.marker](demo_stack, snippet, tmp_path)
