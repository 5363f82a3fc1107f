"""Real servers for the benchmarks: the same embedded PostgreSQL and S3 the product starts,
on free loopback ports in a temporary folder, stopped when the benchmark ends."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pixelpipe.core.migrations import apply_migrations  # noqa: E402
from pixelpipe.core.s3 import s3_client  # noqa: E402
from pixelpipe.embedded_postgres import EmbeddedPostgres  # noqa: E402
from pixelpipe.embedded_s3 import EmbeddedS3  # noqa: E402
from pixelpipe.process import free_port  # noqa: E402


@contextlib.contextmanager
def benchmark_servers(s3: bool = False) -> Iterator[dict]:
    with tempfile.TemporaryDirectory(prefix="pixelpipe-bench-") as folder:
        Path(folder).chmod(0o755)
        postgres = EmbeddedPostgres(Path(folder) / "pg" / "data", free_port())
        store = EmbeddedS3(Path(folder) / "s3" / "data", free_port()) if s3 else None
        try:
            url = postgres.start()
            apply_migrations(url)
            endpoint = store.start() if store else ""
            if store:
                # The admin pair (it may create buckets); child processes inherit it.
                os.environ["AWS_ACCESS_KEY_ID"] = store.admin_access_key
                os.environ["AWS_SECRET_ACCESS_KEY"] = store.admin_secret_key
            yield {"database_url": url, "s3_endpoint": endpoint, "folder": Path(folder)}
        finally:
            if store:
                store.stop()
            postgres.stop()


def bench_s3_client(endpoint: str):
    """A client of the benchmark's S3, with the keys benchmark_servers put in the environment."""
    return s3_client(endpoint, os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"], "us-east-1")


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_in_child(script: str, mode: str, *args: str) -> dict:
    """Run one measured way in a process of its own (its own peak RSS, no warm caches from the
    other way): `script --child mode args...` prints its figures as JSON on its last line.
    Adds rows_per_s. The child's stderr is shown with BENCH_PROFILE set, and when it fails."""
    import json
    import subprocess

    output = subprocess.run([sys.executable, script, "--child", mode, *args], capture_output=True, text=True)
    if output.returncode:
        sys.exit(f"{mode} failed:\n{output.stderr[-3000:]}")
    if os.environ.get("BENCH_PROFILE"):
        print(output.stderr[-12000:])
    result = json.loads(output.stdout.strip().splitlines()[-1])
    result["rows_per_s"] = result["rows"] / result["seconds"]
    return result
