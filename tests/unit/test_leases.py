"""A worker's leases on its runs (chronocore.fence), on instants given by the test."""

from __future__ import annotations

import pytest

from chronocore.fence import Leases, margin_s

TTL = 5.0


def test_the_margin_covers_clock_rates_and_acting_and_stays_under_half_the_ttl() -> None:
    assert margin_s(5.0) == pytest.approx(0.25)
    assert margin_s(1.5) == pytest.approx(0.215)
    assert margin_s(0.3) == pytest.approx(0.12)  # capped at 40%: a lease outlasts TTL / 2


def test_a_run_s_lease_lapses_a_ttl_less_the_margin_after_its_start_was_sent() -> None:
    leases: Leases[int] = Leases(ttl_s=TTL)
    leases.started(7, sent=100.0)
    assert leases.next_deadline(100.0) == pytest.approx(100.0 + TTL - margin_s(TTL))
    assert leases.lapsed(104.7) == []
    assert leases.lapsed(104.75) == [7]
    assert leases.lapsed(110.0) == []  # fenced once, forgotten


def test_a_beat_answered_in_time_extends_every_run_from_when_it_was_sent() -> None:
    leases: Leases[int] = Leases(ttl_s=TTL)
    leases.started(1, sent=100.0)
    leases.started(2, sent=101.0)
    assert leases.renewed(103.0, now=103.5) == []
    assert leases.lapsed(107.7) == []
    assert sorted(leases.lapsed(107.75)) == [1, 2]


def test_a_beat_answered_after_a_run_s_lease_lapsed_saves_nothing_of_that_run() -> None:
    leases: Leases[int] = Leases(ttl_s=TTL)
    leases.started(1, sent=100.0)
    leases.started(2, sent=103.0)
    # Sent in time, but answered after run 1's lease ran out: a sweep may have run.
    assert leases.renewed(104.0, now=105.0) == [1]
    assert leases.lapsed(108.7) == []
    assert leases.lapsed(108.75) == [2]


def test_the_worker_holds_only_while_a_write_was_answered_within_the_lease() -> None:
    leases: Leases[int] = Leases(ttl_s=TTL)
    assert not leases.holds(0.0)  # nothing answered yet
    leases.renewed(10.0, now=10.1)
    assert leases.holds(14.7) and not leases.holds(14.75)
    assert leases.next_deadline(14.75) is None
    leases.renewed(20.0, now=20.1)  # back: holds again
    assert leases.holds(20.1)


def test_an_ended_run_is_never_fenced() -> None:
    leases: Leases[int] = Leases(ttl_s=TTL)
    leases.started(3, sent=0.0)
    leases.ended(3)
    assert leases.lapsed(100.0) == []
