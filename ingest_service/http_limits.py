"""The HTTP parser with size limits: request lines and headers are refused before the app.

uvicorn's httptools protocol accepts a request target and headers of any size, so a stranger
could make every worker buffer megabytes per request. This subclass counts while parsing and
answers 414 (request target) or 431 (headers) with a JSON body, then drops whatever else the
client sends until it hangs up (closing at once, with its data unread, would reset the
connection before the client reads the answer), for a few seconds at most.
"""

from __future__ import annotations

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

# Fixed, documented in docs/security.md: far above what a browser or SDK sends.
MAX_REQUEST_TARGET_BYTES = 8 * 1024
MAX_HEADER_BYTES = 16 * 1024
DISCARD_SECONDS = 5.0


class _TooLarge(Exception):
    def __init__(self, status: int, code: str, detail: str):
        self.status, self.code, self.detail = status, code, detail


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """httptools with a cap on the request target and on all header bytes together."""

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0

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
