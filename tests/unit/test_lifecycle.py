"""Every long-running part of a node is a service (``chronocore.node``): ``stop()`` is safe
before ``start()`` and twice, and leaves none of its threads behind; ``run_services``
(the heart of ``serve_node``) starts services in order and stops them in reverse. A loop
(``chronocore.lifecycle.Loop``) outlives its steps' errors and paces itself by their
answers.

No database: the parts are made with stand-ins for what they would only use while working
(a registry that records, a dispatcher with no free slot, a DSN nobody answers)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from chronocore.groupcommit import GroupCommit
from chronocore.lifecycle import Loop
from chronocore.node import Hooks, Service, run_services
from chronocore.reaper import Reaper
from chronocore.registry import Heartbeat
from chronosync_coordinator.claim import ClaimLoop
from chronosync_coordinator.dispatch import Dispatcher
from chronosync_coordinator.notify import Deliverer
from chronosync_scheduler.http import make_server
from chronosync_scheduler.materializer import Materializer
from chronosync_worker.pool import SlotPool
from chronosync_worker.server import RpcServer, WorkerServicer

# A port nobody listens on: the claim loop's LISTEN fails at once and retries.
NOBODY = "host=127.0.0.1 port=1 dbname=none connect_timeout=1"


def until(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        threading.Event().wait(0.005)


def threads_named(*names: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name in names or
            any(t.name.startswith(f"{n}-") for n in names)]


class Recorder:
    """A service that notes its starts and stops in a shared list."""

    def __init__(self, name: str, calls: list[str], *, fail_start: bool = False) -> None:
        self.name = name
        self.calls = calls
        self.fail_start = fail_start

    def start(self) -> None:
        self.calls.append(f"start {self.name}")
        if self.fail_start:
            raise RuntimeError(f"{self.name} cannot start")

    def stop(self) -> None:
        self.calls.append(f"stop {self.name}")


class StandInRegistry:
    """What a heartbeat asks of the registry, recorded (the SQL is tested elsewhere)."""

    kind = "test"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def announce(self) -> bool:
        self.calls.append("announce")
        return True

    def heartbeat(self, *, running: int = 0) -> None:
        self.calls.append("heartbeat")

    def leave(self) -> None:
        self.calls.append("leave")


class NoFreeSlots:
    """A dispatcher whose workers are all busy: the claim loop waits, claiming nothing."""

    def free_slots(self) -> int:
        return 0


class NoDeliveries:
    """Webhook deliveries of which none is ever due."""

    def prune(self, *, retention_s: float) -> None:
        pass

    def claim(self, *, owner: str, limit: int, lease_s: float) -> list:
        return []


class Steps(Loop):
    """A loop whose steps follow ``plan``: each entry is raised if an exception, else
    returned (a wait); once the plan is done, steps wait for a wake. ``calls`` records its
    steps and its own start and stop."""

    def __init__(self, *plan: Any, interval_s: float = 3600.0, first_wait: bool = False,
                 daemon: bool = True) -> None:
        super().__init__(name="test-loop", interval_s=interval_s, first_wait=first_wait,
                         daemon=daemon)
        self.plan = list(plan)
        self.calls: list[str] = []

    def run_once(self) -> float | None:
        self.calls.append("step")
        what = self.plan.pop(0) if self.plan else None
        if isinstance(what, Exception):
            raise what
        return what

    def _on_start(self) -> None:
        self.calls.append("start")

    def _on_stop(self) -> None:
        self.calls.append("stop")


def heartbeat() -> Heartbeat:
    return Heartbeat(StandInRegistry(), interval_s=0.05)  # type: ignore[arg-type]


def claim_loop() -> ClaimLoop:
    return ClaimLoop(repo=None, dispatcher=NoFreeSlots(),  # type: ignore[arg-type]
                     coordinator_id="coordinator-test", dsn=NOBODY, batch=1, max_idle_s=0.1)


def dispatcher() -> Dispatcher:
    return Dispatcher(None, coordinator_id="coordinator-test",  # type: ignore[arg-type]
                      ttl_s=5, refresh_s=1, tls=None)


def materializer() -> Materializer:
    return Materializer(jobs=None, registry=None, horizon_s=1, tls=None)  # type: ignore[arg-type]


def deliverer() -> Deliverer:
    return Deliverer(hooks=NoDeliveries(), owner="coordinator-test",  # type: ignore[arg-type]
                     allow=(), timeout_s=1, retention_s=60)


def api_server() -> Service:
    return make_server(None, host="127.0.0.1", port=0)  # type: ignore[arg-type]


def group_commit() -> GroupCommit[int, int]:
    return GroupCommit(lambda items: items, name="test-writes")


def slot_pool() -> SlotPool:
    return SlotPool(repo=None, worker_id="worker-test", capacity=1,  # type: ignore[arg-type]
                    workdir="/", kill_grace_s=1, reaper=None, lease_s=1, ttl_s=2)


def rpc_server() -> RpcServer:
    servicer = WorkerServicer(slot_pool(), worker_id="worker-test")
    return RpcServer(servicer, addr="127.0.0.1:0", tls=None)


SERVICES: dict[str, Callable[[], Service]] = {
    "heartbeat": heartbeat,
    "claim loop": claim_loop,
    "dispatcher": dispatcher,
    "materializer": materializer,
    "webhook deliverer": deliverer,
    "http server": api_server,
    "group commit": group_commit,
    "slot pool": slot_pool,
    "reaper": Reaper,
    "worker rpc server": rpc_server,
    "hooks": Hooks,
    "loop": Steps,
}

# The threads each service runs while started: none may outlive its stop. (The claim
# loop's LISTEN thread is left to end by itself, within a second: nothing waits for it.)
THREADS = ("heartbeat", "claim-loop", "materializer", "http", "http-watchdog",
           "test-writes", "fence", "record-starts", "record-outcomes", "orphans", "webhooks",
           "webhook", "test-loop")


@pytest.fixture(autouse=True)
def no_thread_left_behind() -> Iterator[None]:
    before = set(threads_named(*THREADS))
    yield
    left = [t.name for t in threads_named(*THREADS) if t not in before and t.is_alive()]
    assert not left, f"threads still running after stop: {left}"


@pytest.mark.parametrize("make", SERVICES.values(), ids=SERVICES.keys())
def test_a_service_stopped_before_it_started_stops_quietly_twice(
    make: Callable[[], Service],
) -> None:
    service = make()
    service.stop()
    service.stop()


@pytest.mark.parametrize("make", SERVICES.values(), ids=SERVICES.keys())
def test_a_started_service_stops_twice_and_leaves_no_thread(
    make: Callable[[], Service],
) -> None:
    service = make()
    service.start()
    service.stop()
    service.stop()


def test_the_heartbeat_announces_at_start_and_leaves_once_at_stop() -> None:
    registry = StandInRegistry()
    beats = Heartbeat(registry, interval_s=0.01)  # type: ignore[arg-type]
    beats.stop()
    assert registry.calls == [], "a heartbeat never started has nothing to leave"
    beats = Heartbeat(registry, interval_s=0.01)  # type: ignore[arg-type]
    beats.start()
    until(lambda: "heartbeat" in registry.calls, "a beat")
    beats.stop()
    beats.stop()
    assert registry.calls[0] == "announce"
    assert "heartbeat" in registry.calls
    assert registry.calls[-1] == "leave" and registry.calls.count("leave") == 1


def test_the_slot_pool_says_it_drains_once_and_only_if_it_ran() -> None:
    said: list[str] = []
    unstarted = SlotPool(repo=None, worker_id="w", capacity=1,  # type: ignore[arg-type]
                         workdir="/", kill_grace_s=1, reaper=None, lease_s=1, ttl_s=2,
                         on_drain=lambda: said.append("draining"))
    unstarted.stop()
    assert said == []
    pool = SlotPool(repo=None, worker_id="w", capacity=1,  # type: ignore[arg-type]
                    workdir="/", kill_grace_s=1, reaper=None, lease_s=1, ttl_s=2,
                    on_drain=lambda: said.append("draining"))
    pool.start()
    pool.stop()
    pool.stop()
    assert said == ["draining"]


def test_a_slot_pool_takes_no_work_before_it_starts() -> None:
    pool = slot_pool()
    pool.renewed(time.monotonic())  # as if the announce was answered: not fenced
    assert pool.draining, "offers before the pool's threads run are refused"
    pool.start()
    assert not pool.draining
    pool.stop()
    assert pool.draining


def test_a_group_commit_takes_nothing_before_it_starts() -> None:
    group = group_commit()
    with pytest.raises(RuntimeError, match="not started"):
        group.submit(1)
    group.start()
    assert group.submit(1) == 1
    group.stop()


def test_services_start_in_order_and_stop_in_reverse() -> None:
    calls: list[str] = []
    stop = threading.Event()
    stop.set()  # as if SIGTERM came at once: run_services still stops what it started
    run_services([Recorder(n, calls) for n in ("heartbeat", "server", "loop")], stop,
                 ready=lambda: calls.append("ready"))
    assert calls == ["start heartbeat", "start server", "start loop", "ready",
                     "stop loop", "stop server", "stop heartbeat"]


def test_a_service_that_cannot_start_stops_those_started_before_it_in_reverse() -> None:
    calls: list[str] = []
    services = [Recorder("heartbeat", calls), Recorder("server", calls, fail_start=True),
                Recorder("loop", calls)]
    with pytest.raises(RuntimeError, match="server cannot start"):
        run_services(services, threading.Event(), ready=lambda: calls.append("ready"))
    assert calls == ["start heartbeat", "start server", "stop server", "stop heartbeat"]


def test_hooks_run_their_stop_once_and_only_after_a_start() -> None:
    calls: list[str] = []
    never = Hooks(on_start=lambda: calls.append("start"), on_stop=lambda: calls.append("stop"))
    never.stop()
    never.start()
    assert calls == [], "stopped before it started: it never starts"
    hooks = Hooks(on_start=lambda: calls.append("start"), on_stop=lambda: calls.append("stop"))
    hooks.start()
    hooks.stop()
    hooks.stop()
    assert calls == ["start", "stop"]


def test_a_loop_logs_a_database_error_as_a_warning_and_any_other_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=Steps.__module__)
    loop = Steps(psycopg.OperationalError("the database is away"), RuntimeError("a bug"),
                 interval_s=0.01)
    loop.start()
    until(lambda: loop.calls.count("step") >= 3, "a step after both errors")
    loop.stop()
    [away, bug] = [r for r in caplog.records if r.name == Steps.__module__]
    assert away.levelno == logging.WARNING and "the database is away" in away.getMessage()
    assert away.exc_info is None
    assert bug.levelno == logging.ERROR and bug.exc_info is not None
    assert isinstance(bug.exc_info[1], RuntimeError)


def test_a_loop_steps_again_at_once_after_a_zero_and_otherwise_waits_for_its_interval_or_a_wake(
) -> None:
    loop = Steps(0.0, 0.0, None, first_wait=True)  # an interval of an hour
    loop.start()
    assert loop.calls == ["start"], "the first step waits for the interval"
    loop.wake()
    until(lambda: loop.calls.count("step") == 3, "the steps that follow at once")
    assert loop.calls.count("step") == 3, "after None, the interval again"
    loop.wake()
    until(lambda: loop.calls.count("step") == 4, "a step on the wake")
    loop.stop()
    assert loop.calls == ["start", "step", "step", "step", "step", "stop"]


def test_a_loop_s_stop_waits_for_the_step_in_flight() -> None:
    ended: list[str] = []

    class Slow(Steps):
        def run_once(self) -> float | None:
            self.calls.append("step")
            until(self._stop.is_set, "stop to be asked")
            threading.Event().wait(0.2)  # time for a stop that did not wait to return
            ended.append("step")
            return None

    loop = Slow(daemon=False)
    loop.start()
    until(lambda: "step" in loop.calls, "the step to begin")
    loop.stop()
    ended.append("stop")
    assert ended == ["step", "stop"]


def test_a_loop_runs_its_own_start_and_stop_once_and_only_if_started() -> None:
    never = Steps()
    never.stop()
    never.start()
    assert never.calls == [], "stopped before it started: it never starts"
    loop = Steps()
    loop.start()
    loop.stop()
    loop.stop()
    assert loop.calls[0] == "start" and loop.calls[-1] == "stop"
    assert loop.calls.count("stop") == 1
