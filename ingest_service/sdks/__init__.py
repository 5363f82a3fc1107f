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
    envelope: dict | None = None  # defaults for every event (/collect's batch envelope)


def checked_batch(events: list, limits: Limits, write_key, payload_bytes: int) -> SdkBatch:
    if len(events) > limits.max_batch_events:
        raise BodyRejected(413, "too_many_events", f"{len(events)} events in one request; the cap is "
                           f"{limits.max_batch_events}. Lower the SDK's batch size (flushAt / max batch size).")
    return SdkBatch(events, write_key if isinstance(write_key, str) and write_key else None, payload_bytes)


def as_dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def without_credentials(event: dict, names: tuple[str, ...], properties: tuple[str, ...] = ()) -> dict:
    """The event as raw_event_data keeps it: without the write key its SDK copies into it.

    The key is a credential, not event data: raw_event_data goes to the client's and the backup
    bucket, where anyone who reads the files could write as the site."""
    if not any(name in event for name in names):
        props = event.get("properties")
        if not properties or type(props) is not dict or not any(name in props for name in properties):
            return event
    kept = {name: value for name, value in event.items() if name not in names}
    props = kept.get("properties")
    if properties and type(props) is dict:
        kept["properties"] = {name: value for name, value in props.items() if name not in properties}
    return kept

