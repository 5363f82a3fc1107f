"""What is derived from the exported files, and how each is rebuilt when an hour's files change.

An erasure rewrites hours (and a re-export may too); everything computed from those files must
follow. Each derived dataset registers here, with the asset keys it materializes and a function
that rebuilds it for one site's changed hours; callers ask `rebuild_after_rewrite` and never name
the datasets. tests/pipeline/test_analytics.py checks that every asset downstream of
hourly_export is registered here or listed in NOT_DERIVED with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

# Rebuild(conn, client, settings, site, hours) -> what it rewrote, for the log and the metadata.
Rebuild = Callable[..., str]


@dataclass(frozen=True)
class DerivedDataset:
    name: str
    asset_keys: tuple[str, ...]
    rebuild: Rebuild


_REGISTERED: dict[str, DerivedDataset] = {}

# Downstream of hourly_export but not rebuilt from its files here, and why.
NOT_DERIVED = {
    "retention_cleanup": "drops verified hours from PostgreSQL; nothing of it is derived from the files",
    "monthly_billing": "an erasure keeps what was delivered billed; it re-issues the statements itself",
}


def register(name: str, asset_keys: tuple[str, ...]) -> Callable[[Rebuild], Rebuild]:
    def decorate(rebuild: Rebuild) -> Rebuild:
        _REGISTERED[name] = DerivedDataset(name, asset_keys, rebuild)
        return rebuild
    return decorate


def registered() -> dict[str, DerivedDataset]:
    _load()
    return dict(_REGISTERED)


def rebuild_after_rewrite(conn, client, settings, site: str, hours: list[datetime]) -> dict[str, str]:
    """Every registered dataset rebuilt for `site` where `hours` changed: name -> what it did."""
    if not hours:
        return {}
    return {name: derived.rebuild(conn, client, settings, site, hours) for name, derived in registered().items()}


def _load() -> None:
    """The modules that register (imported here, not by the callers)."""
    import pipeline.analytics.rebuild  # noqa: F401
