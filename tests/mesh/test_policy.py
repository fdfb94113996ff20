"""The routing policy: less expected work wins; speed and errors weigh in."""

from __future__ import annotations

import random
from collections import Counter

from infermesh.mesh.policy import Candidate, PowerOfTwoChoices, expected_work
from infermesh.mesh.stats import WorkerStats


def measured(tokens_per_second: float, error_rate: float = 0.0) -> WorkerStats:
    stats = WorkerStats(tokens_per_second=tokens_per_second, error_rate=error_rate)
    return stats


def test_one_candidate_is_chosen() -> None:
    only = Candidate("a", 5, WorkerStats())
    assert PowerOfTwoChoices().choose([only]) is only


def test_of_two_the_less_loaded_wins() -> None:
    idle = Candidate("idle", 0, measured(100))
    busy = Candidate("busy", 3, measured(100))
    assert all(
        PowerOfTwoChoices(random.Random(seed)).choose([busy, idle]) is idle for seed in range(20)
    )


def test_a_faster_worker_takes_more_load_before_it_loses() -> None:
    fast = Candidate("fast", 2, measured(400))
    slow = Candidate("slow", 0, measured(50))
    assert expected_work(fast) < expected_work(slow)
    assert PowerOfTwoChoices().choose([slow, fast]) is fast


def test_errors_cost_traffic() -> None:
    healthy = Candidate("healthy", 1, measured(100))
    failing = Candidate("failing", 0, measured(100, error_rate=0.8))
    assert PowerOfTwoChoices().choose([failing, healthy]) is healthy


def test_sampling_spreads_over_equal_candidates() -> None:
    policy = PowerOfTwoChoices(random.Random(7))
    candidates = [Candidate(name, 0, WorkerStats()) for name in "abcd"]
    chosen = Counter(policy.choose(candidates).node_id for _ in range(400))
    assert set(chosen) == set("abcd")


def test_stats_measure_speed_and_errors() -> None:
    stats = WorkerStats()
    stats.record_success(time_to_first_token=0.5, tokens=100, seconds=2.0)
    assert stats.tokens_per_second == 50
    assert stats.time_to_first_token == 0.5
    stats.record_failure()
    assert stats.failures == 1 and stats.jobs == 2
    assert 0 < stats.error_rate < 1
