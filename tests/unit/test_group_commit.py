"""``GroupCommit``'s own rules, with plain write functions (the statements it carries are
tested against PostgreSQL in tests/integration/test_batched_writes.py): each caller gets
its own result, a bad item fails alone, a lost connection fails the whole batch, a
deadlock is sent again, and stopping writes what is queued."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from chronocore.groupcommit import MAX_BATCH, GroupCommit

CALLERS = 40


def wait_until(condition: Callable[[], bool], what: str) -> None:
    done = threading.Event()
    for _ in range(2000):  # 10 s
        if condition():
            return
        done.wait(0.005)
    raise AssertionError(f"timed out waiting for {what}")


class HeldWrite:
    """A write that records its batches, holds the first one until released (so callers
    pile up behind it) and fails items it is told to."""

    def __init__(self, bad: set[int] | None = None) -> None:
        self.batches: list[list[int]] = []
        self.release = threading.Event()
        self.bad = bad or set()

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        if len(self.batches) == 1:
            assert self.release.wait(10), "the test never released the first batch"
        if self.bad & set(items):
            raise ValueError(f"bad items {sorted(self.bad & set(items))}")
        return [item * 10 for item in items]


def submit_all(group: GroupCommit[int, int], write: HeldWrite,
               items: list[int]) -> dict[int, int | Exception]:
    """Submit every item from its own thread while the first batch is held."""
    def one(item: int) -> int | Exception:
        try:
            return group.submit(item)
        except Exception as exc:  # the answer under test
            return exc

    with ThreadPoolExecutor(len(items)) as threads:
        first = threads.submit(one, items[0])
        wait_until(lambda: len(write.batches) == 1, "the first batch")
        rest = {item: threads.submit(one, item) for item in items[1:]}
        wait_until(lambda: group.pending == len(items) - 1, "the callers to queue up")
        write.release.set()
        answers = {items[0]: first.result(), **{i: f.result() for i, f in rest.items()}}
    group.stop()
    return answers


def test_every_caller_gets_its_own_result_from_a_shared_statement() -> None:
    write = HeldWrite()
    group: GroupCommit[int, int] = GroupCommit(write, name="test")
    group.start()
    answers = submit_all(group, write, list(range(1, CALLERS + 1)))
    assert answers == {i: i * 10 for i in range(1, CALLERS + 1)}
    assert write.batches[0] == [1]
    assert len(write.batches) == 2, "the callers queued behind the first should share one"
    assert sorted(write.batches[1]) == list(range(2, CALLERS + 1))


def test_a_bad_item_fails_alone_and_the_rest_of_its_batch_is_written() -> None:
    write = HeldWrite(bad={7})
    group: GroupCommit[int, int] = GroupCommit(write, name="test")
    group.start()
    answers = submit_all(group, write, list(range(1, CALLERS + 1)))
    assert isinstance(answers.pop(7), ValueError)
    assert answers == {i: i * 10 for i in range(1, CALLERS + 1) if i != 7}


def test_a_lost_connection_fails_every_item_of_the_batch() -> None:
    write = HeldWrite()
    lost = psycopg.OperationalError("server closed the connection unexpectedly")

    def failing(items: list[int]) -> list[int]:
        write(items)
        raise lost

    group: GroupCommit[int, int] = GroupCommit(failing, name="test")
    group.start()
    answers = submit_all(group, write, list(range(1, 11)))
    assert all(answer is lost for answer in answers.values())
    assert len(write.batches) == 2, "a lost connection must not be retried item by item"


def test_a_deadlocked_batch_is_sent_again() -> None:
    calls: list[list[int]] = []

    def deadlocks_once(items: list[int]) -> list[int]:
        calls.append(items)
        if len(calls) == 1:
            raise psycopg.errors.DeadlockDetected("deadlock detected")
        return [-item for item in items]

    group: GroupCommit[int, int] = GroupCommit(deadlocks_once, name="test")
    group.start()
    assert group.submit(5) == -5
    assert calls == [[5], [5]]
    group.stop()


def test_a_batch_never_exceeds_the_bound() -> None:
    write = HeldWrite()
    group: GroupCommit[int, int] = GroupCommit(write, name="test", max_batch=8)
    group.start()
    answers = submit_all(group, write, list(range(1, 30)))
    assert answers == {i: i * 10 for i in range(1, 30)}
    assert max(len(b) for b in write.batches) == 8
    assert MAX_BATCH >= 8


def test_stopping_writes_what_is_queued_then_refuses_more() -> None:
    write = HeldWrite()
    group: GroupCommit[int, int] = GroupCommit(write, name="test")
    group.start()
    with ThreadPoolExecutor(4) as threads:
        answers = [threads.submit(group.submit, 1)]
        wait_until(lambda: len(write.batches) == 1, "the first batch")
        answers += [threads.submit(group.submit, item) for item in (2, 3)]
        wait_until(lambda: group.pending == 2, "the callers to queue up")
        stopping = threads.submit(group.stop)
        wait_until(lambda: not group.submit_open, "the group to close")
        with pytest.raises(RuntimeError):
            group.submit(4)
        write.release.set()
        stopping.result(timeout=10)
    assert [a.result() for a in answers] == [10, 20, 30]
    group.stop()  # twice is fine
