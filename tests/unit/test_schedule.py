"""The pure schedule against the brute-force reference (tests/reference.py)."""

import math

import pytest
import reference
from hypothesis import given, settings
from hypothesis import strategies as st

from axolotl_savefix.rules import schedule

runs = st.tuples(
    st.integers(1, 300),  # L: batches per epoch
    st.integers(1, 9),  # G: gradient accumulation
    st.integers(1, 40),  # k: saves per epoch
    st.integers(1, 4),  # epochs the run may span
    st.floats(0.05, 1.0),  # where in the last epoch max_steps falls
)


def _max_steps(L, G, epochs, frac):
    S = math.ceil(L / G)
    return max(1, (epochs - 1) * S + math.ceil(frac * S))


@settings(max_examples=400, deadline=None)
@given(runs)
def test_per_epoch_steps_match_the_brute_force_walk(run):
    L, G, k, epochs, frac = run
    M = _max_steps(L, G, epochs, frac)
    assert schedule.per_epoch_steps(L, G, k, M) == reference.patched_saves(L, G, k, M)


@settings(max_examples=400, deadline=None)
@given(runs)
def test_float_epoch_decision_fires_exactly_at_the_planned_steps(run):
    """Drive the decision with state.epoch as Transformers computes it, guard included."""
    L, G, k, epochs, frac = run
    M = _max_steps(L, G, epochs, frac)
    saved, done = [], 0
    for step, _, _, epoch_float in reference.walk(L, G, M):
        reached = schedule.targets_reached(epoch_float, k)
        if reached > done or step == M:
            saved.append(step)
            done = max(done, reached)
    assert saved == reference.patched_saves(L, G, k, M)


@settings(max_examples=200, deadline=None)
@given(runs)
def test_every_target_saves_once_and_nothing_else(run):
    L, G, k, epochs, frac = run
    M = _max_steps(L, G, epochs, frac)
    S = math.ceil(L / G)
    steps = schedule.per_epoch_steps(L, G, k, M)
    assert steps == sorted(set(steps)) and steps[-1] == M and all(1 <= s <= M for s in steps)
    full_epochs = M // S
    # each complete epoch saves min(k, S) times and ends with a save
    for e in range(full_epochs):
        in_epoch = [s for s in steps if e * S < s <= (e + 1) * S]
        assert len(in_epoch) == min(k, S)
        assert in_epoch[-1] == (e + 1) * S


@settings(max_examples=200, deadline=None)
@given(runs)
def test_stock_interval_rule_matches_the_reference(run):
    L, G, k, epochs, frac = run
    M = _max_steps(L, G, epochs, frac)
    ratio = schedule.stock_per_epoch_ratio(k, epochs)
    if ratio is None:
        assert schedule.epoch_end_steps(L, G, M) == reference.stock_saves(L, G, k, epochs, M)
    else:
        assert schedule.interval_steps(M, ratio) == reference.stock_saves(L, G, k, epochs, M)


def test_the_reported_case_by_hand():
    # 60 samples, micro batch 2: L = 30 batches, G = 1, 4 saves per epoch, 2 epochs.
    # Targets 7.5, 15, 22.5, 30 batches -> steps 8, 15, 23, 30, then +30.
    assert schedule.per_epoch_steps(30, 1, 4, 60) == [8, 15, 23, 30, 38, 45, 53, 60]
    # stock: ratio 1/8 of 60 steps -> every 8 steps, plus the last
    assert schedule.interval_steps(60, 1 / 8) == [8, 16, 24, 32, 40, 48, 56, 60]


def test_six_per_epoch_is_six_not_five():
    # 20 steps, 6 targets at 20/6 * j = 3.33, 6.67, 10, 13.33, 16.67, 20
    assert schedule.per_epoch_steps(20, 1, 6, 20) == [4, 7, 10, 14, 17, 20]
    assert len(schedule.interval_steps(20, 1 / 6)) == 5


def test_more_saves_than_steps_saves_every_step():
    assert schedule.per_epoch_steps(6, 1, 8, 12) == list(range(1, 13))


def test_accumulation_remainder_and_short_last_epoch():
    # L = 25 batches, G = 3 -> S = 9 steps, the last one takes a single batch.
    # k = 4: targets 6.25, 12.5, 18.75, 25 batches -> steps 3 (9 batches), 5 (15), 7 (21), 9 (25).
    assert schedule.target_steps_in_epoch(25, 3, 4) == [3, 5, 7, 9]
    # Axolotl's max_steps is one short of two epochs (17, not 18); 17 is saved.
    assert schedule.per_epoch_steps(25, 3, 4, 17) == [3, 5, 7, 9, 12, 14, 16, 17]
    assert schedule.last_epoch_end(25, 3, 17) == 18


@pytest.mark.parametrize(
    ("epoch", "k", "expected"),
    [
        (0.0, 4, 0),
        (0.2499999999999999, 4, 1),  # float noise below a target counts as reached
        (0.24, 4, 0),
        (0.9999999999999999, 4, 4),
        (1.0000000000000002, 4, 4),
        (0 + 14 / 21, 3, 2),  # 14 of 21 batches: exactly the second third
        (1.5, 2, 3),
    ],
)
def test_targets_reached(epoch, k, expected):
    assert schedule.targets_reached(epoch, k) == expected


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, None])
def test_invalid_counts_are_refused(bad):
    with pytest.raises(ValueError, match="positive integer"):
        schedule.per_epoch_steps(10, 1, bad, 10)


@settings(max_examples=400, deadline=None)
@given(st.integers(1, 300), st.integers(1, 9), st.integers(1, 400))
def test_steps_in_epoch_is_the_set_of_target_steps(L, G, k):
    assert schedule.steps_in_epoch(L, G, k) == sorted(set(schedule.target_steps_in_epoch(L, G, k)))


def test_a_billion_saves_per_epoch_costs_what_one_per_step_costs():
    """k = 10**9 passes Axolotl's schema: the schedule must not build k targets (O(min(k, S)))."""
    import time

    start = time.perf_counter()
    steps = schedule.per_epoch_steps(30, 1, 10**9, 60)
    assert time.perf_counter() - start < 0.5  # O(k) would take minutes and tens of GB
    assert steps == schedule.per_epoch_steps(30, 1, 30, 60) == list(range(1, 61))
