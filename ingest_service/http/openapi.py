"""The collector's OpenAPI document, served at /openapi.json for client authors and tooling.

Precise enough to fuzz against (tests/ingest_service/test_openapi_fuzz.py): every status each
route can answer, with its content type and body schema. The write routes' entries are built
from the rows the app routes by (`document(routes)`), so a route cannot be missing here.
"""

from __future__ import annotations

_SITE_ID = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
            "description": "The tenant. May be left out when the page URL (url, the envelope's url "
                           "or the Referer) has a valid host: shop.example.com -> shop-example-com."}
_TEXT = {"type": "string", "maxLength": 2048}
_EVENT = {
    "type": "object",
    "required": ["eventType", "siteId"],
    "additionalProperties": True,
    "description": "Any other field is kept verbatim in raw_event_data. Strings must not contain "
                   "NUL (\\u0000) and nesting is limited to 32 levels: such events are rejected "
                   "(400, dead-lettered).",
    "properties": {
        "eventType": {"type": "string", "minLength": 1, "maxLength": 50, "pattern": "^[A-Za-z0-9_.:-]+$"},
        "siteId": _SITE_ID,
        "sessionId": {**_TEXT, "description": "Stored up to 100 characters."},
        "visitorId": {**_TEXT, "description": "Stored up to 100 characters."},
        "timestamp": {"oneOf": [{"type": "string", "format": "date-time"},
                                {"type": "integer", "description": "epoch milliseconds"}],
                      "description": "Outside 1970..9999, or unparseable: the receive time."},
        "url": {**_TEXT, "description": "Stored up to 2,048 characters."},
        "path": {**_TEXT, "description": "Stored up to 500 characters."},
        "userAgent": {**_TEXT, "description": "Stored up to 512 characters."},
    },
}
_RESULT = {
    "type": "object",
    "required": ["accepted", "rejected"],
    "properties": {
        "accepted": {"type": "integer", "minimum": 0},
        "rejected": {"type": "integer", "minimum": 0},
        "errors": {"type": "array", "items": {
            "type": "object", "required": ["index", "error", "detail"],
            "properties": {"index": {"type": "integer"}, "error": {"type": "string"},
                           "detail": {"type": "string"}}}},
    },
}
_ERROR = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {"error": {"type": "string"}, "detail": {"type": "string"},
                   "accepted": {"type": "integer"}, "rejected": {"type": "integer"},
                   "errors": _RESULT["properties"]["errors"]},
}
_RETRY_AFTER = {"Retry-After": {"schema": {"type": "string"}, "description": "Seconds to wait."}}
_JSON_ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _refusal(description: str, retry: bool = False) -> dict:
    return {"description": description, **_JSON_ERROR, **({"headers": _RETRY_AFTER} if retry else {})}


_LIMITED = _refusal("Over PIXELPIPE_RATE_LIMIT_PER_IP or _PER_SITE; nothing stored, retry later", True)
_UNAVAILABLE = _refusal("Queue full or database unavailable; nothing stored, retry later", True)
_PIXEL_PARAMETERS = [
    {"name": name, "in": "query", "required": False, "schema": schema}
    for name, schema in (("eventType", _EVENT["properties"]["eventType"]), ("siteId", _SITE_ID),
                         ("url", _TEXT), ("sessionId", _TEXT), ("visitorId", _TEXT),
                         ("timestamp", {"type": "string"}))
]
_TEXT_RESPONSE = {"content": {"text/plain": {"schema": {"type": "string"}}}}
_RESULT_RESPONSE = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}}}


def write_operation(summary: str, body: dict, keyed: bool, parameters: list[dict]) -> dict:
    """An SDK protocol's endpoint (docs/sdks.md): the same answers as /collect, in that SDK's shape."""
    responses = {
        "200": {"description": "Every accepted event is committed; rejected ones are dead-lettered", **_RESULT_RESPONSE},
        "400": _refusal("Malformed or invalid input (dead-lettered)"),
        "413": _refusal("Body, batch or what it would store over its cap (dead-lettered)"),
        "414": _refusal("Request target over 8 KiB"),
        "431": _refusal("Headers over 16 KiB"),
        "429": _LIMITED,
        "503": _UNAVAILABLE,
    }
    if keyed:
        responses["401"] = _refusal("No valid write key (dead-lettered)")
    operation = {"summary": summary, "requestBody": {"required": True, "content": {
        "application/json": {"schema": body}}}, "responses": responses}
    if parameters:
        operation["parameters"] = parameters
    return {"post": operation}


def route_paths(route) -> dict:
    """The OpenAPI path items of one write route row (http/write_path.py's WriteRoute)."""
    if route.described is not None:
        return {path: route.described for path in route.paths}
    parameters = []
    if route.calls:
        parameters.append({"name": "call", "in": "path", "required": True, "schema": {"enum": list(route.calls)}})
    if route.key.where in ("query", "header") and route.key.name.lower() != "authorization":
        parameters.append({"name": route.key.name, "in": route.key.where, "required": False,
                           "schema": {"type": "string"}})
    # A 401 wherever a key can be refused: a required one, or one presented outside the body.
    keyed = route.key.required or route.key.outside_body
    return {path: write_operation(route.summary, route.request_schema, keyed, parameters)
            for path in route.paths}


# /collect's path item, written out: it documents its content types and envelope precisely.
COLLECT_OPERATION = {"post": {
    "summary": "One event, an array of events, or a batch envelope.",
    "description": "Content-Type application/json, or text/plain with a JSON body "
                   "(navigator.sendBeacon). Content-Encoding gzip is accepted up to "
                   "PIXELPIPE_MAX_BODY_BYTES inflated and 400x its size. Server-side "
                   "senders may add Authorization: Bearer <write key>.",
    "requestBody": {"required": True, "content": {
        "application/json": {"schema": {"oneOf": [
            {"$ref": "#/components/schemas/Event"},
            {"type": "array", "items": {"$ref": "#/components/schemas/Event"}, "maxItems": 1000},
            {"$ref": "#/components/schemas/Batch"},
        ]}},
    }},
    "responses": {
        "200": {"description": "Every accepted event is committed; rejected ones are in the "
                               "dead letter and listed in errors",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}}},
        "400": _refusal("Malformed or invalid input (dead-lettered)"),
        "401": _refusal("Authorization header without a valid write key (dead-lettered)"),
        "413": _refusal("Body, batch or what it would store over its cap (dead-lettered)"),
        "415": _refusal("Unsupported Content-Type or Content-Encoding (dead-lettered)"),
        "414": _refusal("Request target over 8 KiB"),
        "431": _refusal("Headers over 16 KiB"),
        "429": _LIMITED,
        "503": _UNAVAILABLE,
    },
}}

# Request schemas the SDK rows (http/sdk_routes.py) name.
OBJECT = {"type": "object", "additionalProperties": True}
SEGMENT_MESSAGE = {**OBJECT, "properties": {
    "type": {"enum": ["track", "page", "screen", "identify", "group", "alias"]},
    "event": {"type": "string"}, "messageId": {"type": "string"}, "userId": {"type": "string"},
    "anonymousId": {"type": "string"}, "timestamp": {"type": "string"}, "context": OBJECT,
    "properties": OBJECT}}
POSTHOG_EVENT = {**OBJECT, "properties": {
    "event": {"type": "string"}, "uuid": {"type": "string"}, "distinct_id": {"type": "string"},
    "api_key": {"type": "string"}, "timestamp": {"type": "string"}, "properties": OBJECT}}
SNOWPLOW_PAYLOAD = {"type": "object", "additionalProperties": {"type": "string"}, "properties": {
    "e": {"type": "string"}, "aid": {"type": "string"}, "eid": {"type": "string"}, "url": {"type": "string"},
    "cx": {"type": "string"}, "ue_px": {"type": "string"}}}
def document(write_routes) -> dict:
    """The whole document: the pixel and operator endpoints, and one entry per write route."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "pixelpipe collector", "version": "1"},
        "paths": {
            "/i": {"get": {
                "summary": "Tracking pixel: the query parameters are one event (any other parameter "
                           "is kept in raw_event_data).",
                "parameters": _PIXEL_PARAMETERS,
                "responses": {
                    "200": {"description": "1x1 transparent GIF, also for bad input (dead-lettered)",
                            "content": {"image/gif": {"schema": {"type": "string", "format": "binary"}}}},
                    "414": _refusal("Request target over 8 KiB"),
                    "431": _refusal("Headers over 16 KiB"),
                    "429": _LIMITED,
                    "503": _UNAVAILABLE,
                },
            }},
            "/t.js": {"get": {"summary": "The JS tracker", "responses": {
                "200": {"description": "script", "content": {"application/javascript": {"schema": {"type": "string"}}}},
                "304": {"description": "not modified (If-None-Match matched the ETag)"}}}},
            "/healthz": {"get": {"summary": "Process alive", "responses": {
                "200": {"description": "alive", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["status"], "properties": {"status": {"const": "alive"}}}}}}}}},
            "/readyz": {"get": {"summary": "Database reachable (on PIXELPIPE_ADMIN_PORT when that is set)",
                                "responses": {
                                    "200": {"description": "ready", "content": {"application/json": {"schema": {
                                        "type": "object", "properties": {"status": {"const": "ready"}}}}}},
                                    "503": {"description": "not ready", "headers": _RETRY_AFTER,
                                            "content": {"application/json": {"schema": {"type": "object"}}}},
                                    "404": {"description": "served on the admin port instead"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (on PIXELPIPE_ADMIN_PORT when that is set)",
                                 "responses": {"200": {"description": "text", **_TEXT_RESPONSE},
                                               "404": {"description": "served on the admin port instead"}}}},
            **{path: item for route in write_routes for path, item in route_paths(route).items()},
        },
        "components": {"schemas": {
            "Event": _EVENT,
            "Batch": {"type": "object", "required": ["eventType", "events"], "properties": {
                "eventType": {"const": "batch"},
                "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}, "maxItems": 1000},
                "siteId": _SITE_ID, "sessionId": _TEXT, "visitorId": _TEXT, "url": _TEXT}},
            "Result": _RESULT,
            "Error": _ERROR,
        }},
    }
