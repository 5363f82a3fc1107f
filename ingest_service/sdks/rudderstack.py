"""RudderStack's beacon transport (`useBeacon` in its browser SDK): POST /beacon/v1/batch.

navigator.sendBeacon can set no header, so the write key travels in the query string
(`?writeKey=`) and the body, a Segment-shaped `{"batch": [...], "sentAt"}`, is sent as
text/plain. Everything else is Segment's protocol (segment.py).
"""

from __future__ import annotations

from ingest_service.events import Limits
from ingest_service.sdks import SdkBatch
from ingest_service.sdks.segment import segment_batch


def beacon_batch(payload: bytes, write_key: str | None, limits: Limits) -> SdkBatch:
    batch = segment_batch(payload, "batch", None, limits)
    if write_key:
        batch.write_key = write_key
    return batch
