"""Reading ahead and writing behind: keep the cores on the kernels while one thread reads and another writes.

A conversion is read -> encode -> write per tensor. The encode step runs in the C kernels on every core with the
GIL released; reading (mapping a tensor's pages of the page cache, io/safetensors.map_tensor) and writing (file
writes, the output's sha256) also release the GIL but run on one thread each. Done in line, they are the serial part of the run: about a quarter of a 1.1B conversion on
one thread. Here they run beside the kernels, each on its own thread, with a bounded queue between stages so at most
`depth` tensors wait at either end: peak memory is a few tensors, never the model.

Errors cross threads: a failure in the reader or the writer is re-raised in the caller at its next call, and the
caller leaving early (an error of its own, Ctrl-C) stops both threads before the files are aborted.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")
_DONE = object()
_POLL_SECONDS = 0.1   # how often a blocked thread looks whether the other side has stopped


class _Stop(Exception):
    """The consumer went away; the producer thread ends quietly."""


def _put(q: "queue.Queue[object]", item: object, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise _Stop
        try:
            q.put(item, timeout=_POLL_SECONDS)
            return
        except queue.Full:
            continue


def read_ahead(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate `items` on a background thread, at most `depth` items ahead of the consumer.

    The producer's exceptions surface in the consumer where the failing item would have been. Closing the
    generator early (break, an exception in the consumer, Ctrl-C) stops the producer and waits for it.
    """
    q: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                _put(q, item, stop)
            _put(q, _DONE, stop)
        except _Stop:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            try:
                _put(q, _Raised(exc), stop)
            except _Stop:
                pass

    thread = threading.Thread(target=produce, name="quantcli-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()


class _Raised:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class WriteBehind(Generic[T]):
    """Run `write(item)` for each submitted item, in order, on one background thread, `depth` items at most waiting.

    Use as a context manager: leaving the block normally waits for every write and re-raises the first error;
    leaving it by an exception drops what has not been written yet and waits only for the write under way.
    """

    def __init__(self, write: Callable[[T], None], depth: int = 2) -> None:
        self._write = write
        self._q: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="quantcli-write-behind", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                item = self._q.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            if item is _DONE:
                return
            if self._error is not None or self._stop.is_set():
                continue   # drain without writing, so a blocked submit() can return and see the error
            try:
                self._write(item)  # type: ignore[arg-type]
            except BaseException as exc:  # noqa: BLE001 - re-raised in the submitting thread
                self._error = exc

    def _raise_pending(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def submit(self, item: T) -> None:
        self._raise_pending()
        _put(self._q, item, self._stop)

    def __enter__(self) -> "WriteBehind[T]":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            _put(self._q, _DONE, self._stop)
            self._thread.join()
            self._raise_pending()
            return
        self._stop.set()
        self._thread.join()
