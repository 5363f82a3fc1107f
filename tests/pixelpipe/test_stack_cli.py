"""Every command finds the running `pixelpipe up` by itself and says which stores it used; with
the stack stopped, each says so in one line naming the fix; a background `pixelpipe up` stops
on SIGINT (issue 25 items 2, 3, 4, 9; issue 20 item 14)."""

import hashlib
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
from dagster_graphql import DagsterGraphQLClient

from pixelpipe.process import free_port
from tests.pixelpipe.test_up import _env, _processes_of


def _cli(env, *args):
    return subprocess.run([sys.executable, "-m", "pixelpipe.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def _ignore_sigint():
    """What a non-interactive shell does for a job started with `&`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_commands_find_the_running_stack_say_which_and_fail_in_one_line_once_it_stops(state_dir):
    home = state_dir / "cli-home"
    ports = {name: free_port() for name in ("collector", "dagster", "postgres", "s3")}
    env = {k: v for k, v in _env(home, ports).items() if not k.startswith("AWS_")}
    up = subprocess.Popen([sys.executable, "-m", "pixelpipe.cli", "up"], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, preexec_fn=_ignore_sigint)
    try:
        for line in up.stdout:
            if "Press Ctrl-C" in line:
                break
        assert up.poll() is None
        local = f"127.0.0.1:{ports['postgres']}/pixelpipe"

        added = _cli(env, "site", "add", "shop")
        assert added.returncode == 0, added.stderr
        assert f"using the local stack's PostgreSQL ({local}" in added.stderr
        listed = _cli(env, "site", "list")
        assert listed.returncode == 0 and "shop\t" in listed.stdout, listed.stderr
        migrated = _cli(env, "migrate")
        assert migrated.returncode == 0 and "already up to date" in migrated.stdout, migrated.stderr
        assert f"using the local stack's PostgreSQL ({local}" in migrated.stderr

        verified = _cli(env, "verify", "s3://pixelpipe-clients")
        assert verified.returncode == 0, verified.stderr
        assert (f"using the local stack's S3 at http://127.0.0.1:{ports['s3']} with its read-only keys"
                in verified.stderr)

        erased = _cli(env, "erase", "--site", "shop", "--visitor", "v-1")
        assert erased.returncode == 0, erased.stderr
        assert f"using the local stack's PostgreSQL ({local}" in erased.stderr

        # Through Dagster: the job gets a stored request's id; its run config never holds the id.
        stored = _cli(env, "erase", "--site", "shop", "--visitor", "secret-visitor-7", "--in-dagster")
        assert stored.returncode == 0, stored.stderr
        client = DagsterGraphQLClient("127.0.0.1", port_number=ports["dagster"])
        run_id = client.submit_job_execution("erase_visitor_job", run_config={
            "ops": {"erase_visitor": {"config": {"request_id": int(stored.stdout)}}}})
        deadline = time.monotonic() + 120
        while (status := client.get_run_status(run_id).value) not in ("SUCCESS", "FAILURE", "CANCELED"):
            assert time.monotonic() < deadline, status
            time.sleep(0.5)
        assert status == "SUCCESS"
        password = (home / "postgres" / "password").read_text().strip()
        with psycopg.connect(f"postgresql://postgres:{password}@{local}") as conn:
            assert conn.execute("SELECT count(*) FROM runs WHERE run_body LIKE '%%secret-visitor-7%%'"
                                ).fetchone()[0] == 0
            assert conn.execute("SELECT count(*) FROM erasure_requests").fetchone()[0] == 0
            assert conn.execute("SELECT count(*) FROM erasures WHERE visitor_sha256 = %s",
                                (hashlib.sha256(b"secret-visitor-7").hexdigest(),)).fetchone()[0] == 1

        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
        backfill = _cli(env, "backfill", "--from", f"{hour:%Y-%m-%d-%H:%M}", "--to", f"{hour:%Y-%m-%d-%H:%M}")
        assert backfill.returncode == 0, backfill.stderr
        backfill_id = backfill.stdout.strip()
        link = f"http://127.0.0.1:{ports['dagster']}/runs/b/{backfill_id}"
        assert backfill.stderr.rstrip().endswith(link)  # Dagster 1.13's page of a backfill
        assert httpx.get(link).status_code == 200

        # A shell's background job: SIGINT is ignored when it starts, and still stops the stack.
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            up.wait(60)
    deadline = time.monotonic() + 10
    while _processes_of(home) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_of(home) == []

    # The stack is down: each command says so in one line that names the fix, never a traceback.
    hour_text = f"{hour:%Y-%m-%d-%H:%M}"
    for args in (["erase", "--site", "shop", "--visitor", "v-1"],
                 ["erase", "--site", "shop", "--visitor", "v-1", "--in-dagster"],
                 ["verify", "s3://pixelpipe-clients"],
                 ["backfill", "--from", hour_text, "--to", hour_text]):
        down = _cli(env, *args)
        assert down.returncode == 2, (args, down.stderr)
        assert "Traceback" not in down.stderr and "pixelpipe up" in down.stderr, (args, down.stderr)
        assert len([line for line in down.stderr.splitlines() if "using" not in line]) == 1, (args, down.stderr)
    # migrate and site work without the stack: they start its PostgreSQL for themselves, and say so.
    alone = _cli(env, "site", "list")
    assert alone.returncode == 0 and "shop\t" in alone.stdout, alone.stderr
    assert "starting the embedded PostgreSQL" in alone.stderr
    assert _processes_of(home) == []
