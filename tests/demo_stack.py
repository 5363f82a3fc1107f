"""One `pixelpipe up --demo` for the tests that need the whole local stack as a new user starts
it (tests/test_docs_snippets.py, tests/pixelpipe/test_demo.py): free ports, its own
PIXELPIPE_HOME, no PIXELPIPE_PARTITIONS_START (partitions start where the data does), stopped
with everything it started at the end of the session."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from pixelpipe.process import free_port

REPO = Path(__file__).resolve().parent.parent
PORTS = ("collector", "dagster", "postgres", "s3")
# Set by the test session for other tests; a new user's shell has none of them.
NOT_IN_A_USERS_SHELL = ("DATABASE_URL", "PIXELPIPE_S3_ENDPOINT", "PIXELPIPE_PARTITIONS_START",
                        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "DAGSTER_HOME")


BACKFILL = """query ($id: String!) { partitionBackfillOrError(backfillId: $id) {
  ... on PartitionBackfill { status } } }"""


@dataclass
class DemoStack:
    home: Path
    ports: dict[str, int]
    env: dict[str, str]
    banner: str = ""
    output: list[str] = field(default_factory=list)
    backfilled: dict | None = None

    @property
    def collector(self) -> str:
        return f"http://127.0.0.1:{self.ports['collector']}"

    @property
    def dagster(self) -> str:
        return f"http://127.0.0.1:{self.ports['dagster']}"

    def graphql(self, query: str, **variables) -> dict:
        answer = httpx.post(f"{self.dagster}/graphql", json={"query": query, "variables": variables},
                            timeout=30).json()
        assert "errors" not in answer, answer
        return answer["data"]

    def backfill_demo_hours(self) -> dict:
        """Run the backfill command `up --demo` printed, as printed, once per session, and await
        the backfill: {"command", "first", "last", "status"}."""
        if self.backfilled is None:
            match = re.search(r"^\s+(pixelpipe backfill --from (\S+) --to (\S+))$", self.banner, re.M)
            assert match, self.banner
            command, first, last = match.groups()
            submitted = subprocess.run([sys.executable, "-m", "pixelpipe.cli", *shlex.split(command)[1:]],
                                       env=self.env, cwd=REPO, capture_output=True, text=True, timeout=120)
            assert submitted.returncode == 0, submitted.stderr
            status, deadline = "REQUESTED", time.monotonic() + 300
            while status in ("REQUESTED", "CANCELING", "FAILING") and time.monotonic() < deadline:
                time.sleep(1)  # the daemon runs it; its status is the event to await
                status = self.graphql(BACKFILL, id=submitted.stdout.strip())["partitionBackfillOrError"]["status"]
            self.backfilled = {"command": command, "first": first, "last": last, "status": status}
        return self.backfilled

    def database_url(self) -> str:
        password = (self.home / "postgres" / "password").read_text().strip()
        return f"postgresql://postgres:{password}@127.0.0.1:{self.ports['postgres']}/pixelpipe"


def start_demo_stack(home: Path):
    """Start `pixelpipe up --demo`; yields the DemoStack once its banner is printed."""
    ports = {name: free_port() for name in PORTS}
    env = {k: v for k, v in os.environ.items() if k not in NOT_IN_A_USERS_SHELL}
    env.update({"PIXELPIPE_HOME": str(home), **{f"PIXELPIPE_{name.upper()}_PORT": str(port)
                                                 for name, port in ports.items()}})
    stack = DemoStack(home, ports, env)
    up = subprocess.Popen([sys.executable, "-m", "pixelpipe.cli", "up", "--demo"], env=env, cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in up.stdout:  # the banner is printed once every service answers
            stack.output.append(line)
            if "Press Ctrl-C" in line:
                break
        stack.banner = "".join(stack.output)
        assert "Press Ctrl-C" in stack.banner, stack.banner
        # Keep reading, so the stack never blocks on a full pipe.
        threading.Thread(target=lambda: stack.output.extend(up.stdout), daemon=True).start()
        yield stack
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=90)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
