"""Session-wide real servers: one embedded PostgreSQL and one embedded S3, on free loopback ports.

Each test gets its own database, cloned from a migrated template (cheap, fully isolated), and
its own buckets. Every server is stopped at the end of the session: no process is left behind.
"""

from __future__ import annotations

import os

# Partitions from September 2026, so whole past months exist to bill (read at import of pipeline).
os.environ.setdefault("PIXELPIPE_PARTITIONS_START", "2026-09-01-00:00")

import itertools  # noqa: E402
import tempfile  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import psycopg  # noqa: E402
import pytest  # noqa: E402

from pixelpipe.core.migrations import apply_migrations  # noqa: E402
from pixelpipe.core.s3 import ensure_buckets, s3_client  # noqa: E402
from pixelpipe.embedded_postgres import EmbeddedPostgres  # noqa: E402
from pixelpipe.embedded_s3 import EmbeddedS3  # noqa: E402
from pixelpipe.process import free_port  # noqa: E402

TEMPLATE_DB = "pixelpipe_template"
_db_counter = itertools.count()


@pytest.fixture(scope="session")
def state_dir():
    # Not under pytest's tmp_path: the embedded PostgreSQL runs as another user under root and
    # must be able to traverse the folders above its data directory.
    with tempfile.TemporaryDirectory(prefix="pixelpipe-tests-") as path:
        yield Path(path)


@pytest.fixture(scope="session")
def postgres_server(state_dir):
    with EmbeddedPostgres(state_dir / "postgres" / "data", free_port()) as server:
        yield server


@pytest.fixture(scope="session")
def template_database(postgres_server):
    with psycopg.connect(postgres_server.url("postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    apply_migrations(postgres_server.url(TEMPLATE_DB))
    return TEMPLATE_DB


def new_database(postgres_server, template: str | None) -> str:
    name = f"test_{next(_db_counter)}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(postgres_server.url("postgres"), autocommit=True) as conn:
        clause = f" TEMPLATE {template}" if template else ""
        conn.execute(f"CREATE DATABASE {name}{clause}")
    return postgres_server.url(name)


@pytest.fixture
def database_url(postgres_server, template_database):
    """A fresh, migrated database for this test (no partitions ahead yet)."""
    return new_database(postgres_server, template_database)


@pytest.fixture
def empty_database_url(postgres_server):
    """A fresh database with no schema at all."""
    return new_database(postgres_server, None)


@pytest.fixture
def own_postgres(state_dir):
    """A migrated PostgreSQL of this test's own, which the test may stop and start again:
    (server, url)."""
    server = EmbeddedPostgres(state_dir / f"own-{uuid.uuid4().hex[:8]}" / "data", free_port())
    url = server.start()
    try:
        apply_migrations(url)
        yield server, url
    finally:
        server.stop()


@pytest.fixture
def db(database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="session")
def s3_server(state_dir):
    with EmbeddedS3(state_dir / "s3" / "data", free_port()) as server:
        yield server


@pytest.fixture(scope="session")
def s3(s3_server):
    """An admin client: it creates buckets (the services' keys cannot) and reads what they wrote."""
    return s3_client(s3_server.endpoint, s3_server.admin_access_key, s3_server.admin_secret_key, "us-east-1")


@pytest.fixture
def buckets(s3):
    """Fresh client and backup buckets for this test."""
    suffix = uuid.uuid4().hex[:8]
    names = {"client": f"clients-{suffix}", "backup": f"backup-{suffix}"}
    ensure_buckets(s3, list(names.values()))
    return names


@pytest.fixture(scope="session")
def demo_stack(state_dir):
    """One `pixelpipe up --demo` shared by the tests that read the whole stack (tests/demo_stack.py)."""
    from tests.demo_stack import start_demo_stack

    yield from start_demo_stack(state_dir / "demo-home")
