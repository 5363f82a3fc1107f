"""`pixelpipe up`: the whole stack on one machine, started in order and stopped cleanly.

PostgreSQL (embedded unless DATABASE_URL), S3 (embedded unless PIXELPIPE_S3_ENDPOINT),
migrations and buckets, then the collector and Dagster's webserver and daemon as child
processes. Ctrl-C, SIGINT (also when started in the background) or SIGTERM stops the collector first (it flushes what it accepted), then
Dagster, then the stores. Data stays under PIXELPIPE_HOME.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

from pixelpipe.core.database import redact_password
from pixelpipe.core.errors import PixelpipeError
from pixelpipe.core.migrations import migrate
from pixelpipe.core.s3 import ensure_buckets, s3_client
from pixelpipe.core.settings import Settings
from pixelpipe.embedded_postgres import database_url as pixelpipe_database_url
from pixelpipe.embedded_s3 import EmbeddedS3
from pixelpipe.process import ManagedProcess, exit_on_sigterm, require_free_port

REPO = Path(__file__).resolve().parent.parent


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def write_dagster_instance(dagster_home: Path) -> Path:
    """$DAGSTER_HOME/dagster.yaml: the repository's dagster.yaml plus Dagster's storage in the
    events database (read from PIXELPIPE_DAGSTER_STORAGE_URL when Dagster starts)."""
    import yaml

    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    config["storage"] = {"postgres": {"postgres_url": {"env": "PIXELPIPE_DAGSTER_STORAGE_URL"}}}
    target = Path(dagster_home) / "dagster.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


def dagster_storage_url(database_url: str) -> str:
    """Dagster's storage URL: psycopg2 explicitly (psycopg 3 breaks its run storage's NOTIFY)."""
    scheme, rest = database_url.split("://", 1)
    return f"postgresql+psycopg2://{rest}" if scheme in ("postgres", "postgresql") else database_url


class Stack:
    """The processes of one `pixelpipe up`, in start order."""

    def __init__(self, settings: Settings, demo: bool = False):
        self.settings = settings
        self.demo = demo
        self.home = settings.home
        self.stores = contextlib.ExitStack()  # PostgreSQL and S3: entered first, closed last
        self.services: list[ManagedProcess] = []
        self.env: dict[str, str] = {}
        self.stopping = threading.Event()
        self.s3_admin: tuple[str, str] | None = None
        self.demo_history = ""

    # --- start --------------------------------------------------------------------------

    def start(self) -> None:
        settings = self.settings
        self.home.mkdir(parents=True, exist_ok=True)
        require_free_port(settings.collector_port, "PIXELPIPE_COLLECTOR_PORT", "the collector")
        require_free_port(settings.dagster_port, "PIXELPIPE_DAGSTER_PORT", "the Dagster webserver")
        database_url = self.stores.enter_context(pixelpipe_database_url(settings))
        s3_endpoint, key, secret = self._start_s3()
        self._prepare(database_url, s3_endpoint, key, secret)
        if self.demo:  # before Dagster starts: its partitions begin where the data does
            from pixelpipe.demo import seed_history

            self.demo_history = seed_history(database_url, settings.export_grace_minutes)
        dagster_home = self.home / "dagster"
        write_dagster_instance(dagster_home)
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "PIXELPIPE_S3_ENDPOINT": s3_endpoint,
            "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_REGION": settings.aws_region,
            "PIXELPIPE_HOME": str(self.home),
            "DAGSTER_HOME": str(dagster_home),
            "PIXELPIPE_DAGSTER_STORAGE_URL": dagster_storage_url(database_url),
        }
        if self.demo:
            self.env["PIXELPIPE_DEMO_PAGE"] = "1"
        logs = self.home / "logs"
        python = sys.executable
        bin_dir = Path(python).parent
        collector = ManagedProcess(
            "collector", [python, "-m", "pixelpipe.cli", "collector"], logs / "collector.log",
            env=self.env, cwd=REPO, stop_timeout=35)
        webserver = ManagedProcess(
            "Dagster webserver",
            [str(bin_dir / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1",
             "-p", str(settings.dagster_port)],
            logs / "dagster-webserver.log", env=self.env, cwd=REPO, stop_timeout=15)
        daemon = ManagedProcess(
            "Dagster daemon", [str(bin_dir / "dagster-daemon"), "run", "-w", "workspace.yaml"],
            logs / "dagster-daemon.log", env=self.env, cwd=REPO, stop_timeout=15)
        for service in (collector, webserver, daemon):
            service.start()
            self.services.append(service)
        collector.wait_ready(lambda: http_ok(f"{self.collector_url}/healthz"), timeout=60)
        webserver.wait_ready(lambda: http_ok(f"{self.dagster_url}/server_info"), timeout=120)

    @property
    def collector_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.collector_port}"

    @property
    def dagster_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.dagster_port}"

    def _start_s3(self) -> tuple[str, str, str]:
        settings = self.settings
        if settings.s3_endpoint:
            return settings.s3_endpoint, settings.aws_access_key_id, settings.aws_secret_access_key
        server = self.stores.enter_context(EmbeddedS3(self.home / "s3" / "data", settings.s3_port))
        self.s3_admin = (server.admin_access_key, server.admin_secret_key)
        return server.endpoint, server.access_key, server.secret_key

    def _prepare(self, database_url: str, s3_endpoint: str, key: str, secret: str) -> None:
        migrate(database_url)
        # The embedded S3's service keys cannot create buckets; its admin keys can.
        client = s3_client(s3_endpoint, *(self.s3_admin or (key, secret)), self.settings.aws_region)
        try:
            ensure_buckets(client, [self.settings.client_bucket, self.settings.backup_bucket])
        except Exception as error:  # noqa: BLE001 - any S3 error: say which setting to check
            raise PixelpipeError(
                f"Cannot create or reach the buckets {self.settings.client_bucket} and "
                f"{self.settings.backup_bucket} at {s3_endpoint or 'AWS S3'} ({error}). Check "
                "PIXELPIPE_S3_ENDPOINT, the AWS_* credentials, PIXELPIPE_CLIENT_BUCKET and "
                "PIXELPIPE_BACKUP_BUCKET.") from None

    # --- run and stop -------------------------------------------------------------------

    def watch(self) -> int:
        """Block until asked to stop or until a service dies; returns the exit status."""
        while not self.stopping.wait(1.0):
            for service in self.services:
                if not service.running():
                    print(f"\n{service.name} exited unexpectedly. Its log: {service.log_path}\n"
                          f"{service.log_tail()}", file=sys.stderr)
                    return 1
        return 0

    def stop(self) -> None:
        # The collector first: it stops accepting and flushes what it acknowledged.
        for service in self.services:
            service.stop()
        self.stores.close()


def run_stack(settings: Settings, demo: bool = False) -> int:
    stack = Stack(settings, demo)
    exit_on_sigterm()
    # A shell starts a background job (`pixelpipe up &`) with SIGINT ignored, and Python then
    # leaves it ignored: `kill -INT` would do nothing. Ctrl-C and SIGINT stop the stack always.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    status = 1
    try:
        stack.start()
        print(f"""
pixelpipe is up (data in {settings.home})
  collector        {stack.collector_url}   (POST /collect, GET /i, /t.js, /metrics)
  Dagster UI       {stack.dagster_url}
  PostgreSQL       {redact_password(stack.env['DATABASE_URL'])}
  S3               {stack.env['PIXELPIPE_S3_ENDPOINT'] or 'AWS S3'}   buckets {settings.client_bucket}, {settings.backup_bucket}""")
        if demo:
            from pixelpipe.demo import start_demo_traffic

            print(f"  demo page        {stack.collector_url}/demo")
            print(stack.demo_history)
            start_demo_traffic(stack.collector_url, stack.stopping)
        print("Press Ctrl-C to stop.", flush=True)
        status = stack.watch()
    except KeyboardInterrupt:
        status = 0
    except SystemExit as exit_request:
        status = exit_request.code or 0
    finally:
        stack.stopping.set()
        with contextlib.suppress(KeyboardInterrupt):
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            stack.stop()
        print("pixelpipe stopped.", flush=True)
    return status
