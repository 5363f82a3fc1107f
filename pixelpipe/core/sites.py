"""Tenants as operators manage them: the `sites` table behind `pixelpipe site ...`.

Which sites may send, from which page hosts, to which bucket and prefix, each site's write
key for server-side senders, and whether its events need that key (require_key). The key is
shown once and stored only as its SHA-256.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

import psycopg
from psycopg import sql

from pixelpipe.core.errors import PixelpipeError

# The collector's rule for a siteId (ingest_service.events.SITE_ID), for operator input.
_SITE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_HOST = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
WRITE_KEY_PREFIX = "ppk_"


def write_key_hash(key: str) -> str:
    """How a write key is stored and looked up. Keys are 256-bit random, so a plain SHA-256
    (no salt, no stretching) cannot be reversed, and the lookup stays one dict access."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Site:
    site_id: str
    allowed: bool
    allowed_hosts: list[str] | None
    client_bucket: str | None
    client_prefix: str
    has_write_key: bool
    require_key: bool = False


def check_site_id(site_id: str) -> str:
    if not _SITE_ID.fullmatch(site_id):
        raise PixelpipeError(f"{site_id!r} is not a site id: 1-100 letters, digits, '.', '_' or '-', "
                             "starting with a letter or digit.")
    return site_id


def parse_hosts(text: str) -> list[str] | None:
    """'shop.example.com, example.org' -> hosts (IDNA, lower case); '' -> None (any host)."""
    hosts = []
    for part in text.split(","):
        part = part.strip().lower().rstrip(".")
        if not part:
            continue
        try:
            host = part.encode("idna").decode("ascii")
        except UnicodeError:
            host = ""
        if not _HOST.fullmatch(host):
            raise PixelpipeError(f"{part!r} is not a host name (e.g. shop.example.com).")
        hosts.append(host)
    return hosts or None


def list_sites(conn: psycopg.Connection) -> list[Site]:
    return [Site(*row) for row in conn.execute(
        """SELECT site_id, allowed, allowed_hosts, client_bucket, client_prefix,
                  write_key_sha256 IS NOT NULL, require_key FROM sites ORDER BY site_id""")]


def save_site(conn: psycopg.Connection, site_id: str, *, create: bool, allowed: bool | None = None,
              allowed_hosts: list[str] | None | str = "keep", client_bucket: str | None = None,
              client_prefix: str | None = None, require_key: bool | None = None) -> None:
    """Add a site (create) or change one; only the given fields change."""
    check_site_id(site_id)
    exists = conn.execute("SELECT 1 FROM sites WHERE site_id = %s", (site_id,)).fetchone()
    if create and exists:
        raise PixelpipeError(f"Site {site_id!r} exists already; change it with `pixelpipe site set`.")
    if not create and not exists:
        raise PixelpipeError(f"No site {site_id!r}; add it with `pixelpipe site add {site_id}`.")
    if create:
        conn.execute("INSERT INTO sites (site_id) VALUES (%s)", (site_id,))
    changes = {"allowed": allowed, "client_bucket": client_bucket, "client_prefix": client_prefix,
               "require_key": require_key}
    for column, value in changes.items():
        if value is not None:
            conn.execute(sql.SQL("UPDATE sites SET {} = %s WHERE site_id = %s").format(
                sql.Identifier(column)), (value or None if column == "client_bucket" else value,
                                                  site_id))
    if allowed_hosts != "keep":
        conn.execute("UPDATE sites SET allowed_hosts = %s WHERE site_id = %s", (allowed_hosts, site_id))


def new_write_key(conn: psycopg.Connection, site_id: str) -> str:
    """A new key for the site; the old one stops working. Returns the key (shown once)."""
    key = WRITE_KEY_PREFIX + secrets.token_urlsafe(32)
    updated = conn.execute("UPDATE sites SET write_key_sha256 = %s WHERE site_id = %s",
                           (write_key_hash(key), check_site_id(site_id))).rowcount
    if not updated:
        raise PixelpipeError(f"No site {site_id!r}; add it with `pixelpipe site add {site_id}`.")
    return key
