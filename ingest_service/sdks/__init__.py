"""Other SDKs' own HTTP protocols, so a site already instrumented with Segment, RudderStack,
Snowplow or PostHog switches to pixelpipe by changing a host name (docs/sdks.md).

Each module turns one protocol's request into SdkEvents (our field names, the SDK's event kept as
sent) and shapes the answer its SDK expects; everything after that (limits, admission, the dead
letter, the commit before any 2xx) is the collector's one intake path.
"""

from __future__ import annotations

from dataclasses import dataclass

# load_json: the SDKs read JSON as /collect does (events.py), for the same reasons.
from ingest_service.events import BodyRejected, Limits, load_json  # noqa: F401


@dataclass
class SdkBatch:
    """One request's events, and the write key it presented (None: none, or not a keyed protocol)."""

    events: list
    write_key: str | None = None
    payload_bytes: int = 0


def checked_batch(events: list, limits: Limits, write_key, payload_bytes: int) -> SdkBatch:
    if len(events) > limits.max_batch_events:
        raise BodyRejected(413, "too_many_events", f"{len(events)} events in one request; the cap is "
                           f"{limits.max_batch_events}. Lower the SDK's batch size (flushAt / max batch size).")
    return SdkBatch(events, write_key if isinstance(write_key, str) and write_key else None, payload_bytes)


def as_dict(value) -> dict:
    return value if isinstance(value, dict) else {}

