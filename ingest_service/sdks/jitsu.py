"""Jitsu's browser and server SDKs (@jitsu/js): POST /api/s/{type} (and /api/s/s2s/{type}).

Each request is one Segment-shaped event (type, messageId, anonymousId, userId, context.page,
properties) of the path's type; the write key is the X-Write-Key header. The events are read
as Segment's (segment.py) and stored with the source `jitsu`.
"""

from __future__ import annotations

from ingest_service.events import Limits, SdkEvent
from ingest_service.sdks import SdkBatch
from ingest_service.sdks.segment import segment_batch

SOURCE = "jitsu"


def jitsu_batch(payload: bytes, call: str, write_key: str | None, limits: Limits) -> SdkBatch:
    batch = segment_batch(payload, call, None, limits)
    for event in batch.events:
        if isinstance(event, SdkEvent):
            event.source = SOURCE
    batch.write_key = write_key or batch.write_key
    return batch
