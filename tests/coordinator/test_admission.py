"""Leader-side admission (coordinator/_admission.py): the per-client submission rate and load shedding, on an
injected clock."""

from __future__ import annotations

import pytest

from coordinator._admission import Admission
from coordinator.errors import UnavailableError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_client_gets_two_seconds_of_burst_then_its_rate() -> None:
    clock = Clock()
    admission = Admission(5.0, shed_backlog=100, clock=clock)
    for _ in range(10):
        admission.admit_job("alice", backlog=0)
    with pytest.raises(UnavailableError) as refused:
        admission.admit_job("alice", backlog=0)
    assert refused.value.code == "capacity" and refused.value.retry_after_s == 1
    assert "max_submits_per_s_per_client" in refused.value.message
    admission.admit_job("bob", backlog=0)  # every client has its own bucket
    clock.now += 0.2  # one token back at 5/s
    admission.admit_job("alice", backlog=0)
    with pytest.raises(UnavailableError):
        admission.admit_job("alice", backlog=0)


def test_the_retry_hint_is_the_time_to_the_next_token() -> None:
    clock = Clock()
    admission = Admission(0.25, shed_backlog=100, clock=clock)  # a token every 4 s, a burst of 1
    admission.admit_job("slow", backlog=0)
    with pytest.raises(UnavailableError) as refused:
        admission.admit_job("slow", backlog=0)
    assert refused.value.retry_after_s == 4


def test_zero_turns_the_rate_off_but_a_backlog_still_sheds() -> None:
    admission = Admission(0, shed_backlog=3, clock=Clock())
    for _ in range(1000):
        admission.admit_job("anonymous", backlog=3)
    with pytest.raises(UnavailableError) as shed:
        admission.admit_job("anonymous", backlog=4)
    assert shed.value.code == "capacity" and "shed_backlog_commands" in shed.value.message


def test_idle_clients_are_forgotten() -> None:
    clock = Clock()
    admission = Admission(1.0, shed_backlog=10, clock=clock)
    for k in range(100):
        admission.admit_job(f"c{k}", backlog=0)
    clock.now += 61
    admission.admit_job("late", backlog=0)
    assert list(admission._buckets) == ["late"]
