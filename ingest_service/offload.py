"""Decoding that can take more than a millisecond, off the event loop.

lz-string (ingest_service/sdks/lz64.py) is pure Python: a 64 KiB body costs ~20 ms, and four
clients sending such bodies held every other request of the worker behind them (pixel p99 487 ms,
issue 20). A thread would not help: the decoder holds the GIL. So each collector worker hands
such work to one process of its own, started on first use at a lower CPU priority: the pixel and
/collect keep the cores, and a flood of slow bodies waits for what they leave. The wait is
bounded: past QUEUE_MAX requests waiting, a request is refused at once (503, decoder_busy).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from ingest_service.events import BodyRejected

# Requests of one worker waiting for (or in) its decoding process: each holds at most its body
# (64 KiB for lz64), so a few MiB at most.
QUEUE_MAX = 32
# Above the collector's own priority (0): the decoder gets what the pixel leaves.
NICENESS = 10


def _start_decoding_process() -> None:
    """In the decoding process: a lower priority, and an end with the worker that started it
    (a worker killed outright, SIGKILL or out of memory, would otherwise leave it behind)."""
    os.nice(NICENESS)
    worker = os.getppid()

    def follow_worker() -> None:
        while os.getppid() == worker:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=follow_worker, daemon=True).start()


class SlowDecoding:
    """One worker's decoding process and the bounded queue in front of it."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._waiting = 0
        self._turn: asyncio.Semaphore | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn: a fork of a worker with an event loop and database threads is not safe.
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_start_decoding_process)
        return self._pool

    async def run(self, function, *args):
        """function(*args) in the decoding process; what it raises (BodyRejected) is raised here."""
        if self._waiting >= QUEUE_MAX:
            raise BodyRejected(503, "decoder_busy", "Too many compressed bodies are waiting to be "
                               "decoded; retry in a few seconds, or send gzip (newer SDK versions do).")
        if self._turn is None:
            self._turn = asyncio.Semaphore(2)  # one decoding, one queued in the pool: no backlog there
        self._waiting += 1
        try:
            async with self._turn:
                try:
                    return await asyncio.get_running_loop().run_in_executor(self._executor(), function, *args)
                except BrokenProcessPool:  # the process died (killed, out of memory): a new one next time
                    self._pool = None
                    raise BodyRejected(503, "decoder_busy", "The body could not be decoded this time; "
                                       "retry in a few seconds.") from None
        finally:
            self._waiting -= 1

    def close(self) -> None:
        """Stop the decoding process (the collector's shutdown): nothing is left behind."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
