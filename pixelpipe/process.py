"""A child server process with a log file, a readiness probe and a clean stop.

The embedded PostgreSQL, the embedded S3 and every service `pixelpipe up` starts share this
lifecycle, so "started" means "answering" and "stopped" means "no process left behind".
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pixelpipe.core.errors import PixelpipeError


def exit_on_sigterm() -> None:
    """Make SIGTERM raise SystemExit, so `finally` blocks (stopping embedded servers) run.

    uvicorn re-raises the signal after its own graceful shutdown; with the default handler that
    would kill the process before its embedded PostgreSQL is stopped.
    """

    def _exit(signum, frame):
        raise SystemExit(0)  # a requested, graceful stop

    signal.signal(signal.SIGTERM, _exit)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the kernel says is free right now on `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def require_free_port(port: int, setting: str, what: str, host: str = "127.0.0.1") -> None:
    """Fail with a message naming the port and the setting that changes it."""
    if not port_is_free(port, host):
        raise PixelpipeError(
            f"Port {port} on {host} is already in use, so {what} cannot start. "
            f"Stop whatever holds it, or set {setting} to another port."
        )


class ManagedProcess:
    """One server process: started in its own process group, stopped with escalation."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
        stop_signal: int = signal.SIGTERM,
        stop_timeout: float = 10.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.user = user
        self.stop_signal = stop_signal
        self.stop_timeout = stop_timeout
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                user=self.user,
                start_new_session=True,
            )
        finally:
            log.close()

    def wait_ready(self, probe: Callable[[], bool], timeout: float) -> None:
        """Poll `probe` until it answers True; fail early if the process died."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            if self.process is None or self.process.poll() is not None:
                raise PixelpipeError(
                    f"{self.name} exited during start-up. Its log: {self.log_path}\n{self.log_tail()}"
                )
            if probe():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise PixelpipeError(
                    f"{self.name} did not become ready within {timeout:.0f} s. "
                    f"Its log: {self.log_path}\n{self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float | None = None) -> None:
        """Signal the process group, wait, then kill it: nothing is left behind."""
        if self.process is None:
            return
        timeout = self.stop_timeout if timeout is None else timeout
        if self.process.poll() is None:
            self._signal_group(self.stop_signal)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait(5)
        # Children of the server (e.g. PostgreSQL backends) share its process group.
        self._signal_group(signal.SIGKILL)
        self.process = None

    def _signal_group(self, sig: int) -> None:
        assert self.process is not None
        try:
            os.killpg(self.process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
