"""Run a sink's slow calls in order on one background thread, off the driver's event loop.

Ray Tune calls its callbacks on the driver's scheduling loop: while a sink writes to a tracking
database, no trial is started or stopped. `SerialWorker` keeps a sink's calls in submission order
on a single thread (one writer, as before), so the loop only pays for a queue put. The first
error stops the worker; it is raised, with its cause, from every later `submit` and `close`.
An optional `tick` runs on the same thread every `tick_s` seconds, between calls (a sink that
buffers frequent events writes them in batches from it).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["SerialWorker"]

_STOP = object()


class SerialWorker:
    """`submit(fn, ...)` runs `fn(...)` later on the worker thread; `close()` waits for all."""

    def __init__(self, name: str, background: bool = True,
                 tick: Callable[[], None] | None = None, tick_s: float = 5.0) -> None:
        self.name = name
        self.background = background
        self._tick, self._tick_s = tick, tick_s
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.raise_error()
        if not self.background:
            fn(*args, **kwargs)
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()
        self._queue.put((fn, args, kwargs))

    def close(self) -> None:
        """Run everything submitted so far, stop the thread, raise the first error if any."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None
        self.raise_error()

    def raise_error(self) -> None:
        err = self._error
        if err is not None:
            raise RuntimeError(f"{self.name} failed: {type(err).__name__}: {err}") from err

    def _loop(self) -> None:
        next_tick = time.monotonic() + self._tick_s
        while True:
            wait = None if self._tick is None else max(0.0, next_tick - time.monotonic())
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = None
            if item is _STOP:
                return
            if item is not None:
                self._run(*item)
            if self._tick is not None and time.monotonic() >= next_tick:
                self._run(self._tick, (), {})
                next_tick = time.monotonic() + self._tick_s

    def _run(self, fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> None:
        if self._error is not None:
            return  # later calls depend on the failed one: drop them
        try:
            fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by raise_error
            self._error = exc
