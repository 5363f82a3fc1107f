"""The collector's OpenAPI document, served at /openapi.json for client authors and tooling."""

_EVENT = {
    "type": "object",
    "required": ["eventType"],
    "additionalProperties": True,
    "description": "Any other field is kept verbatim in raw_event_data.",
    "properties": {
        "eventType": {"type": "string", "maxLength": 50},
        "siteId": {"type": "string", "maxLength": 100,
                   "description": "Derived from the page URL's host when absent."},
        "sessionId": {"type": "string"},
        "visitorId": {"type": "string"},
        "timestamp": {"oneOf": [{"type": "string", "format": "date-time"},
                                {"type": "integer", "description": "epoch milliseconds"}]},
        "url": {"type": "string"},
        "path": {"type": "string"},
        "userAgent": {"type": "string"},
    },
}
_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "detail": {"type": "string"},
                   "accepted": {"type": "integer"}, "rejected": {"type": "integer"}},
}
_JSON_ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}

OPENAPI = {
    "openapi": "3.1.0",
    "info": {"title": "pixelpipe collector", "version": "1"},
    "paths": {
        "/i": {"get": {
            "summary": "Tracking pixel: query parameters are one event.",
            "responses": {"200": {"description": "1x1 transparent GIF, also for bad input",
                                  "content": {"image/gif": {}}},
                          "503": {"description": "Database unavailable; retry"}},
        }},
        "/collect": {"post": {
            "summary": "One event, an array of events, or a batch envelope.",
            "requestBody": {"content": {
                "application/json": {"schema": {"oneOf": [
                    {"$ref": "#/components/schemas/Event"},
                    {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
                    {"$ref": "#/components/schemas/Batch"},
                ]}},
                "text/plain": {"schema": {"type": "string", "description": "JSON, as sendBeacon sends it"}},
            }},
            "responses": {
                "200": {"description": "Accepted events are committed",
                        "content": {"application/json": {"schema": {
                            "type": "object",
                            "properties": {"accepted": {"type": "integer"},
                                           "rejected": {"type": "integer"},
                                           "errors": {"type": "array"}}}}}},
                "400": {"description": "Malformed or invalid input (dead-lettered)", **_JSON_ERROR},
                "413": {"description": "Body or batch over its cap (dead-lettered)", **_JSON_ERROR},
                "415": {"description": "Unsupported Content-Type or Content-Encoding", **_JSON_ERROR},
                "503": {"description": "Queue full or database unavailable; nothing stored, retry",
                        **_JSON_ERROR},
            },
        }},
        "/t.js": {"get": {"summary": "The JS tracker", "responses": {"200": {"description": "script"}}}},
        "/healthz": {"get": {"summary": "Process alive", "responses": {"200": {"description": "alive"}}}},
        "/readyz": {"get": {"summary": "Database reachable",
                            "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
    },
    "components": {"schemas": {
        "Event": _EVENT,
        "Batch": {"type": "object", "required": ["eventType", "events"], "properties": {
            "eventType": {"const": "batch"},
            "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
            "siteId": {"type": "string"}, "sessionId": {"type": "string"},
            "visitorId": {"type": "string"}}},
        "Error": _ERROR,
    }},
}
