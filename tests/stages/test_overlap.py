"""The read-ahead and write-behind threads that keep the kernels busy: order, bounds, and errors across threads."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from quantcli.stages.overlap import WriteBehind, read_ahead


def test_read_ahead_keeps_order_and_stays_within_depth() -> None:
    produced: list[int] = []
    consumed: list[int] = []

    def items() -> Iterator[int]:
        for i in range(20):
            produced.append(i)
            yield i

    for i in read_ahead(items(), depth=2):
        # the producer may be at most depth items queued plus one in hand ahead of the consumer
        assert len(produced) - len(consumed) <= 4
        consumed.append(i)
        time.sleep(0.002)
    assert consumed == list(range(20))


def test_read_ahead_raises_the_producers_error_where_it_happened() -> None:
    def items() -> Iterator[int]:
        yield 1
        raise OSError("truncated shard")

    got = []
    with pytest.raises(OSError, match="truncated shard"):
        for i in read_ahead(items()):
            got.append(i)
    assert got == [1]


def test_read_ahead_stops_its_thread_when_the_consumer_leaves() -> None:
    def items() -> Iterator[int]:
        yield from range(10**9)

    before = threading.active_count()
    gen = read_ahead(items())
    assert next(gen) == 0
    gen.close()
    assert threading.active_count() == before


def test_write_behind_writes_in_order_and_waits_for_all() -> None:
    written: list[int] = []
    with WriteBehind(lambda i: (time.sleep(0.001), written.append(i))) as sink:
        for i in range(50):
            sink.submit(i)
    assert written == list(range(50))


def test_write_behind_error_reaches_the_submitter_and_later_items_are_dropped() -> None:
    written: list[int] = []

    def write(i: int) -> None:
        if i == 3:
            raise OSError(28, "No space left on device")
        written.append(i)

    with pytest.raises(OSError, match="No space left"):
        with WriteBehind(write) as sink:
            for i in range(100):
                sink.submit(i)
    assert written == [0, 1, 2]


def test_write_behind_caller_error_stops_the_thread_without_writing_the_rest() -> None:
    written: list[int] = []
    before = threading.active_count()
    with pytest.raises(KeyboardInterrupt):
        with WriteBehind(lambda i: (time.sleep(0.01), written.append(i))) as sink:
            for i in range(10):
                sink.submit(i)
            raise KeyboardInterrupt
    assert threading.active_count() == before
    assert len(written) < 10
