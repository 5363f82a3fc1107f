"""Which PostgreSQL pixelpipe talks to: DATABASE_URL when set, else the local stack's; reachability
checks and messages that never show a password."""

from __future__ import annotations

import re
from urllib.parse import quote

import psycopg
from psycopg.conninfo import conninfo_to_dict

from pixelpipe.core.errors import PixelpipeError
from pixelpipe.core.settings import Settings


def embedded_url(password: str, port: int, database: str = "pixelpipe") -> str:
    """The URL of an embedded PostgreSQL: user postgres, 127.0.0.1, the generated password."""
    return f"postgresql://postgres:{quote(password, safe='')}@127.0.0.1:{port}/{database}"


def local_database_url(settings: Settings) -> str | None:
    """The embedded PostgreSQL that `pixelpipe up` runs for this PIXELPIPE_HOME, found the way
    it lays it out (its generated password in <home>/postgres/password, 127.0.0.1 on
    PIXELPIPE_POSTGRES_PORT), or None when there is none. Lets `dagster dev` and `dagster asset
    materialize` work beside `pixelpipe up` with no environment set."""
    password_file = settings.home / "postgres" / "password"
    if settings.database_url or not password_file.exists():
        return None
    return embedded_url(password_file.read_text().strip(), settings.postgres_port)


def resolve_database_url(settings: Settings) -> str:
    """DATABASE_URL, else the local stack's; a one-line PixelpipeError naming the fix otherwise."""
    url = settings.database_url or local_database_url(settings)
    if not url:
        raise PixelpipeError(
            f"No database: DATABASE_URL is not set and there is no local stack in {settings.home} "
            "(PIXELPIPE_HOME). Start one with `pixelpipe up`, or set DATABASE_URL.")
    return url


def redact_password(url: str) -> str:
    """The URL with its password replaced by ***, for anything printed or logged."""
    return re.sub(r"^([a-z0-9+]+://[^:/@]*):[^@]*@", r"\1:***@", url)


def describe_target(url: str) -> str:
    """host:port/dbname of a URL, without the password, for messages."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "(an unparseable URL)"
    return f"{parts.get('host', 'localhost')}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"


def check_reachable(url: str, timeout: int = 5) -> None:
    """Connect once, failing within `timeout` seconds with a message that names the fix."""
    try:
        with psycopg.connect(url, connect_timeout=timeout):
            return
    except psycopg.ProgrammingError as error:
        raise PixelpipeError(
            f"DATABASE_URL is not a valid PostgreSQL URL ({error}). "
            "Set DATABASE_URL to postgresql://user:password@host:5432/dbname, "
            "or unset it to use the embedded PostgreSQL."
        ) from None
    except psycopg.OperationalError as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise PixelpipeError(
            f"Cannot reach PostgreSQL at {describe_target(url)} ({reason}). "
            "Check that the server is up and that DATABASE_URL points at it, "
            "or unset DATABASE_URL to use the embedded PostgreSQL."
        ) from None
