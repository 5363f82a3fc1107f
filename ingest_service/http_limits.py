"""The HTTP parser with size and time limits: what a request may hold, and how long it may take
to arrive, is bounded before the app.

uvicorn's httptools protocol accepts a request target and headers of any size, so a stranger
could make every worker buffer megabytes per request. This subclass counts while parsing and
answers 414 (request target) or 431 (headers) with a JSON body, then drops whatever else the
client sends until it hangs up (closing at once, with its data unread, would reset the
connection before the client reads the answer), for a few seconds at most.

uvicorn also waits forever for a connection's first request and for headers or a body that
arrive a byte at a time (slowloris): each such connection holds a file descriptor and memory
until the open-file limit refuses everyone. Here a request's headers must be complete within
PIXELPIPE_HEADER_TIMEOUT_SECONDS of the connection opening (or of the previous answer) and its
body within PIXELPIPE_BODY_TIMEOUT_SECONDS of its headers; past that the connection gets a 408
(nothing, when nothing was sent) and is closed. Idle keep-alive connections are uvicorn's own
timeout, set from PIXELPIPE_KEEPALIVE_TIMEOUT_SECONDS (pixelpipe/collector.py).
"""

from __future__ import annotations

import functools

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from pixelpipe.core.settings import Settings

# Fixed, documented in docs/security.md: far above what a browser or SDK sends.
MAX_REQUEST_TARGET_BYTES = 8 * 1024
MAX_HEADER_BYTES = 16 * 1024
DISCARD_SECONDS = 5.0


@functools.cache
def _timeouts() -> tuple[float, float]:
    """(header, body) seconds from the environment, read once per worker process."""
    settings = Settings.from_env()
    return settings.header_timeout_seconds, settings.body_timeout_seconds


class _TooLarge(Exception):
    def __init__(self, status: int, code: str, detail: str):
        self.status, self.code, self.detail = status, code, detail


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """httptools with a cap on the request target and on all header bytes together."""

    _deadline = None  # the running timer: headers, then body

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm(_timeouts()[0], "headers")

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._arm(_timeouts()[1], "body")

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm(_timeouts()[0], "headers")  # the next request's, idle time included

    def _arm(self, seconds: float, phase: str) -> None:
        self._disarm()
        if seconds > 0:
            self._deadline = self.loop.call_later(seconds, self._timed_out, phase)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self, phase: str) -> None:
        """Too slow: a 408 if a request had begun (the app, if it was reading the body, sees the
        client gone), and the connection closed either way."""
        self._deadline = None
        if self.transport.is_closing():
            return
        begun = phase == "body" or bool(getattr(self, "url", None)) or getattr(self, "_header_bytes", 0) > 0
        if begun and not self._refused and (self.cycle is None or not self.cycle.response_started):
            body = b'{"error": "request_timeout", "detail": "The request\'s %s did not arrive in time. ' \
                   b'Nothing was stored."}' % phase.encode()
            self.transport.write(b"".join([
                STATUS_LINE[408],
                b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body),
                body,
            ]))
        self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > MAX_REQUEST_TARGET_BYTES:
            raise _TooLarge(414, "uri_too_long",
                            f"The request target is longer than {MAX_REQUEST_TARGET_BYTES} bytes.")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > MAX_HEADER_BYTES:
            raise _TooLarge(431, "headers_too_large",
                            f"The request headers are larger than {MAX_HEADER_BYTES} bytes in all.")
        super().on_header(name, value)

    _refused = False

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # the answer is sent; the rest of an oversized request is dropped
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as error:
            if isinstance(error.__context__, _TooLarge):
                self._refuse(error.__context__)
                return
            self.send_400_response("Invalid HTTP request received.")
        except httptools.HttpParserError:
            self.send_400_response("Invalid HTTP request received.")
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    def _refuse(self, refusal: _TooLarge) -> None:
        body = b'{"error": "%s", "detail": "%s Nothing was stored."}' % (
            refusal.code.encode(), refusal.detail.encode())
        self.transport.write(b"".join([
            STATUS_LINE[refusal.status],
            b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body),
            body,
        ]))
        self._refused = True
        self.loop.call_later(DISCARD_SECONDS, self.transport.close)
