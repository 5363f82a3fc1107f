"""Collector fixtures: an in-process app (TestClient) and a real `pixelpipe collector` process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import httpx
import pytest
from starlette.testclient import TestClient

from ingest_service.app import create_app
from pixelpipe.core.settings import Settings
from pixelpipe.process import free_port


@pytest.fixture
def settings():
    return Settings()


@pytest.fixture
def client(database_url, settings):
    with TestClient(create_app(settings, database_url)) as test_client:
        yield test_client


def make_client(database_url, **overrides):
    return TestClient(create_app(replace(Settings(), **overrides), database_url))


class CollectorProcess:
    """`pixelpipe collector` as a user runs it, in a subprocess on a free port."""

    def __init__(self, database_url: str, env: dict | None = None, workers: int = 1):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pixelpipe.cli", "collector", "--port", str(self.port),
             "--workers", str(workers)],
            # These tests send as a backend does, with an HTTP library whose user agent is on the
            # crawler list: keep its events (the browser tests cover PIXELPIPE_DROP_BOTS).
            env={**os.environ, "DATABASE_URL": database_url, "PIXELPIPE_DROP_BOTS": "false", **(env or {})},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.process.stdout.read()
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise AssertionError("collector did not start")

    def terminate(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()


@pytest.fixture
def collector_process(database_url):
    processes = []

    def start(url=None, **kwargs):
        proc = CollectorProcess(url or database_url, **kwargs)
        processes.append(proc)
        return proc

    yield start
    for proc in processes:
        proc.terminate()
