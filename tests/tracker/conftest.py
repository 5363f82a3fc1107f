"""The tracker in a real browser: Debian's Chromium driven by Playwright (never a browser
download), the real collector served by uvicorn on a loopback port, and the sites that embed
t.js served from another origin, as on the web."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import uvicorn
from starlette.responses import FileResponse
from starlette.routing import Route

from ingest_service.app import STATIC, create_app
from pixelpipe.core.settings import Settings
from pixelpipe.process import free_port
from tests.pipeline.conftest import resources  # noqa: F401 - the export, for the duplicate test

# What a desktop Chrome says: headless Chromium's own user agent names itself HeadlessChrome,
# which the crawler list rightly treats as a bot.
DESKTOP_UA = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/156.0.0.0 Safari/537.36")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="session")
def playwright():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright is not installed: pip install -e '.[dev]'")
    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip("Chromium is not installed, so the browser tests cannot run: as root, "
                    "`apt-get install chromium` (`make test` does this where it can)")
    with sync_api.sync_playwright() as driver:
        yield driver, executable


@pytest.fixture
def browser(playwright, tmp_path):
    """new(**options) -> a fresh Chromium (its own --user-data-dir) with a desktop user agent."""
    driver, executable = playwright
    contexts = []

    def new(**options):
        context = driver.chromium.launch_persistent_context(
            tempfile.mkdtemp(dir=tmp_path), executable_path=executable, headless=True,
            args=CHROMIUM_FLAGS, **{"user_agent": DESKTOP_UA, **options})
        contexts.append(context)
        return context

    yield new
    for context in contexts:
        context.close()


@dataclass
class LiveCollector:
    url: str
    app: object

    @property
    def collector(self):
        return self.app.collector


@pytest.fixture
def live_collector(database_url):
    """The collector app under uvicorn (as `pixelpipe collector` runs it), in this process so a
    test can reach its salt cache; /demo served as `pixelpipe up --demo` does."""
    demo = Route("/demo", lambda request: FileResponse(STATIC / "demo.html"), methods=["GET"])
    app = create_app(replace(Settings(), flush_interval_ms=1), database_url, extra_routes=[demo])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
        http="ingest_service.http_limits:BoundedHttpToolsProtocol"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, "the collector did not start")
    yield LiveCollector(f"http://127.0.0.1:{port}", app)
    server.should_exit = True
    thread.join(30)


class _Pages(BaseHTTPRequestHandler):
    pages: dict[str, str | Path] = {}

    def do_GET(self):  # noqa: N802 - http.server's name
        body = self.pages.get(self.path.split("?")[0])
        self.send_response(200 if body else 404)
        if isinstance(body, Path):  # a script the site hosts itself (an SDK's published file)
            self.send_header("Content-Type", "application/javascript")
            self.end_headers()
            self.wfile.write(body.read_bytes())
            return
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.end_headers()
        self.wfile.write((body or "not found").encode())

    def log_message(self, *args):
        pass


@dataclass
class Site:
    """A website on its own origin that embeds the collector's t.js."""

    origin: str
    collector_url: str
    pages: dict[str, str | Path]

    def page(self, path: str, body: str = "", **attributes: str) -> str:
        """Serve an HTML page at `path` whose script tag has these data- attributes."""
        attrs = " ".join(f'data-{k.replace("_", "-")}="{v}"' for k, v in attributes.items())
        self.pages[path] = (
            f"<!doctype html><html><head><title>{path}</title>"
            f'<script async src="{self.collector_url}/t.js" {attrs}></script></head>'
            f"<body>{body}</body></html>")
        return self.origin + path


@pytest.fixture
def site(live_collector):
    handler = type("Pages", (_Pages,), {"pages": {}})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Site(f"http://127.0.0.1:{server.server_address[1]}", live_collector.url, handler.pages)
    server.shutdown()
    server.server_close()


def wait_for(condition: Callable, message: str, timeout: float = 30, page=None):
    """Poll until `condition()` is truthy (rows committed, a server up); fail with `message`.

    With `page`, the wait goes through Playwright, which runs route handlers only while the
    test is inside one of its calls."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            pytest.fail(message)
        if page is not None:
            page.wait_for_timeout(50)
        else:
            time.sleep(0.05)
    return result


def npm_package(name: str, version: str, integrity: str) -> Path:
    """The package's published files, fetched from the npm registry once (checked against the
    registry's SHA-512) into the user's cache; the test is skipped when the registry cannot be
    reached. Returns the folder holding package.json."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pixelpipe-tests" / f"{name}-{version}"
    if (cache / "package.json").exists():
        return cache
    url = f"https://registry.npmjs.org/{name}/-/{name.rpartition('/')[2]}-{version}.tgz"
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            tarball = response.read()
    except OSError as error:
        pytest.skip(f"cannot fetch {name}@{version} from the npm registry ({error}); it is fetched once into {cache}")
    algorithm, _, expected = integrity.partition("-")
    assert base64.b64encode(hashlib.new(algorithm, tarball).digest()).decode() == expected, f"{name} integrity"
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache.parent))
    with tarfile.open(fileobj=io.BytesIO(tarball)) as archive:
        archive.extractall(staging, filter="data")
    shutil.rmtree(cache, ignore_errors=True)
    (staging / "package").rename(cache)  # whole, or not at all: a half-extracted cache is never used
    shutil.rmtree(staging, ignore_errors=True)
    return cache
