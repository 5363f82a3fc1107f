"""`pixelpipe migrate` as a user runs it: a clear message, never a traceback."""

import socket
import subprocess
import sys
import threading
import time

import psycopg


def run_cli(*args, env_extra=None, timeout=60):
    import os

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "pixelpipe.cli", *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )


def test_migrate_against_database_url(database_url):
    result = run_cli("migrate", env_extra={"DATABASE_URL": database_url})
    assert result.returncode == 0, result.stderr
    assert "already up to date" in result.stdout
    with psycopg.connect(database_url) as conn:
        partitions = conn.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'events_log'::regclass"
        ).fetchone()[0]
    assert partitions >= 49  # the default partition plus 48 hours ahead and the current hour


def test_migrate_with_closed_port_names_host_and_variable():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connection refused
        result = run_cli("migrate", env_extra={"DATABASE_URL": f"postgresql://u@127.0.0.1:{port}/db"})
    assert result.returncode == 2
    assert f"127.0.0.1:{port}" in result.stderr
    assert "DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_migrate_against_silent_server_fails_within_seconds():
    # A server that accepts connections and never answers: the client must give up by itself.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    held = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        result = run_cli(
            "migrate", env_extra={"DATABASE_URL": f"postgresql://u@127.0.0.1:{port}/db"}
        )
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()
    elapsed = time.monotonic() - started
    assert result.returncode == 2
    assert elapsed < 20
    assert "DATABASE_URL" in result.stderr
    assert "127.0.0.1" in result.stderr
    assert "Traceback" not in result.stderr
