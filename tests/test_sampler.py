"""Epoch plans, data positions and rank schedules (pure numpy: no audio, no processes)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from asr.data.sampler import (
    DataPosition,
    EpochPlan,
    EpochPlanner,
    PlanChangedError,
    describe_plan_change,
    is_unlabeled_turn,
    rank_schedule,
    resolve_start,
)

SETTINGS = dict(max_batch_seconds=60.0, num_buckets=8, min_duration=1.0, max_duration=20.0, seed=3)


def librispeech_like(n: int, seed: int = 0) -> np.ndarray:
    """Durations shaped like train-clean-100: most 10-16.5 s, a tail over 1-24.5 s, mean ~12.7 s."""
    rng = np.random.default_rng(seed)
    main = 16.5 - 6.5 * rng.beta(1.3, 2.5, n)
    tail = 1.0 + 23.5 * rng.beta(2.0, 3.88, n)
    return np.where(rng.random(n) < 0.7, main, tail).astype(np.float32)


@pytest.fixture(scope="module")
def durations() -> np.ndarray:
    d = librispeech_like(700, seed=1)
    d[:5] = [0.5, 0.9, 20.5, 23.0, 1.0]  # four outside [1, 20] s, one on the boundary
    return d


def planner(durations: np.ndarray, **overrides) -> EpochPlanner:
    return EpochPlanner(durations, **{**SETTINGS, **overrides})


def batches_of(plan: EpochPlan) -> list[list[int]]:
    return [plan.batch(b).tolist() for b in range(len(plan))]


# ---------------------------------------------------------------------------------------------
# The epoch plan


@pytest.mark.parametrize("max_batch_seconds", [20.0, 60.0, 300.0])
def test_every_batch_fits_the_padded_seconds_cap(durations, max_batch_seconds):
    plan = planner(durations, max_batch_seconds=max_batch_seconds)(0)
    for b in range(len(plan)):
        seconds = durations[plan.batch(b)].astype(np.float64)
        assert len(seconds) * seconds.max() <= max_batch_seconds
    assert plan.padded_seconds == pytest.approx(
        [len(durations[plan.batch(b)]) * durations[plan.batch(b)].max() for b in range(len(plan))])


def test_an_epoch_holds_each_utterance_in_the_duration_range_exactly_once(durations):
    plan = planner(durations)(0)
    kept = np.flatnonzero((durations >= 1.0) & (durations <= 20.0))
    assert sorted(plan.order.tolist()) == kept.tolist()
    assert {0, 1, 2, 3}.isdisjoint(plan.order.tolist()) and 4 in plan.order


def test_cumulative_counts_give_the_exact_data_before_each_batch(durations):
    plan = planner(durations)(0)
    for b in (0, 1, len(plan) // 2, len(plan)):
        before = plan.order[: plan.cum_utterances[b]]
        assert plan.position(b).utterances == len(before) == sum(len(x) for x in batches_of(plan)[:b])
        assert plan.position(b).seconds == pytest.approx(durations[before].astype(np.float64).sum())
    assert plan.seconds == pytest.approx(plan.cum_seconds[-1])


@pytest.mark.parametrize(
    "change, same",
    [({}, True), ({"seed": 4}, False), ({"num_buckets": 4}, False), ({"max_batch_seconds": 50.0}, False)],
)
def test_plan_is_a_function_of_its_inputs(durations, change, same):
    assert (batches_of(planner(durations)(2)) == batches_of(planner(durations, **change)(2))) is same


def test_each_epoch_has_a_new_order_of_the_same_utterances(durations):
    first, second = planner(durations)(0), planner(durations)(1)
    assert batches_of(first) != batches_of(second)
    assert sorted(first.order.tolist()) == sorted(second.order.tolist())


def test_batch_order_mixes_durations_across_the_epoch(durations):
    plan = planner(durations)(0)
    longest = [durations[plan.batch(b)].max() for b in range(len(plan))]
    half = len(longest) // 2
    assert abs(np.mean(longest[:half]) - np.mean(longest[half:])) < 1.5  # not sorted by length


@pytest.mark.parametrize("max_batch_seconds", [100.0, 200.0, 300.0, 600.0])
def test_padding_waste_is_at_most_5_percent_on_librispeech_like_durations(max_batch_seconds):
    plan = EpochPlan.build(librispeech_like(28_539), max_batch_seconds=max_batch_seconds,
                           num_buckets=16, min_duration=0.5, max_duration=30.0, seed=0, epoch=0)
    assert plan.padding_waste <= 0.05


@pytest.mark.parametrize(
    "change, message",
    [
        ({"min_duration": 25.0, "max_duration": 30.0}, "no utterance lasts"),
        ({"max_duration": 80.0}, "exceeds max_batch_seconds"),
        ({"num_buckets": 0}, "num_buckets"),
        ({"max_batch_seconds": -1.0}, "max_batch_seconds"),
        ({"min_duration": 5.0, "max_duration": 5.0}, "min_duration/max_duration"),
        ({"seed": -1}, "seed and epoch"),
    ],
)
def test_impossible_settings_are_refused_naming_the_setting(durations, change, message):
    with pytest.raises(ValueError, match=message):
        planner(durations, **change)(0)


def test_fingerprint_names_what_changed(durations):
    old, new = planner(durations)(0).fingerprint, planner(durations, seed=9, num_buckets=4)(0).fingerprint
    assert describe_plan_change(old, new) == "num_buckets: 8 -> 4, seed: 3 -> 9"
    edited = durations.copy()
    edited[10] += 1.0
    assert "durations_sha256" in describe_plan_change(old, planner(edited)(0).fingerprint)
    assert planner(durations)(0).fingerprint == planner(durations)(5).fingerprint


# ---------------------------------------------------------------------------------------------
# Data position


def test_position_state_dict_round_trips():
    position = DataPosition(epoch=3, batches=12, utterances=345, seconds=4321.5, plan="version=1 seed=0")
    assert DataPosition.from_state_dict(position.state_dict()) == position


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"version": 7}, "version 7"),
        ({"extra": 1}, r"unknown keys \['extra'\]"),
        ({"batches": None}, "key 'batches'"),
        ({"epoch": -1}, "key 'epoch' = -1"),
        ({"seconds": "10"}, "key 'seconds'"),
    ],
)
def test_position_state_dict_rejects_bad_input_naming_the_key(edit, message):
    state = DataPosition(epoch=1, batches=2).state_dict() | edit
    with pytest.raises(ValueError, match=message):
        DataPosition.from_state_dict(state)


def test_resume_refuses_a_position_of_another_plan_naming_the_change(durations):
    saved = planner(durations)(1).position(4)
    with pytest.raises(PlanChangedError, match=r"max_batch_seconds: 60.0 -> 50.0"):
        resolve_start(saved, planner(durations, max_batch_seconds=50.0)(1))


@pytest.mark.parametrize(
    "position, message",
    [
        (DataPosition(epoch=0, batches=5), "no plan fingerprint"),
        (DataPosition(epoch=1), "epoch 1"),
    ],
)
def test_resume_refuses_positions_it_cannot_check(durations, position, message):
    with pytest.raises(ValueError, match=message):
        resolve_start(position, planner(durations)(0))


def test_resume_refuses_a_batch_count_past_the_plan(durations):
    plan = planner(durations)(0)
    with pytest.raises(ValueError, match="plan has"):
        resolve_start(DataPosition(epoch=0, batches=len(plan), plan=plan.fingerprint), plan)


# ---------------------------------------------------------------------------------------------
# Ranks


def take_rounds(plan_for_epoch, start, world_size, rounds):
    """``rounds`` micro-batches from every rank's stream: {rank: [ScheduledBatch, ...]}."""
    return {rank: list(itertools.islice(rank_schedule(plan_for_epoch, start, rank=rank,
                                                      world_size=world_size), rounds))
            for rank in range(world_size)}


def rest_of_epoch(plan_for_epoch, start, world_size):
    """Every rank's micro-batches from ``start`` to the end of that epoch."""
    plan = plan_for_epoch(start.epoch)
    rounds = (plan.padded_length(world_size, start.batches) - start.batches) // world_size
    taken = take_rounds(plan_for_epoch, start, world_size, rounds)
    assert all(s.epoch == start.epoch for stream in taken.values() for s in stream)
    return taken


def real_utterances(taken) -> list[int]:
    return sorted(i for stream in taken.values() for s in stream if not s.duplicate for i in s.indices.tolist())


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 7])
def test_every_rank_takes_the_same_number_of_batches_and_the_epoch_is_covered(durations, world_size):
    plans = planner(durations)
    plan = plans(0)
    taken = rest_of_epoch(plans, DataPosition(), world_size)
    counts = {rank: len(stream) for rank, stream in taken.items()}
    assert set(counts.values()) == {math.ceil(len(plan) / world_size)}
    assert real_utterances(taken) == sorted(plan.order.tolist())
    duplicates = [s for stream in taken.values() for s in stream if s.duplicate]
    assert len(duplicates) == plan.padded_length(world_size) - len(plan) < world_size
    assert all(np.array_equal(s.indices, plan.batch(s.plan_index - len(plan))) for s in duplicates)
    last = [stream[-1].after for stream in taken.values()]
    assert all(p == DataPosition(epoch=1, plan=plan.fingerprint) for p in last)


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_ranks_interleave_the_one_global_order(durations, world_size):
    plans = planner(durations)
    taken = rest_of_epoch(plans, DataPosition(), world_size)
    interleaved = [taken[r][k].indices.tolist() for k in range(len(taken[0])) for r in range(world_size)]
    assert interleaved[: len(plans(0))] == batches_of(plans(0))


def test_each_batch_carries_the_position_after_its_round(durations):
    plans = planner(durations)
    plan = plans(0)
    taken = take_rounds(plans, DataPosition(), 3, 4)
    for k in range(4):
        assert {taken[r][k].after.batches for r in range(3)} == {3 * (k + 1)}
        assert taken[0][k].after == plan.position(3 * (k + 1))


def test_the_stream_rolls_into_the_next_epoch(durations):
    plans = planner(durations)
    n = len(plans(0))
    stream = list(itertools.islice(rank_schedule(plans, DataPosition(), rank=0, world_size=1), n + 3))
    assert [s.epoch for s in stream[n - 1 : n + 1]] == [0, 1]
    assert [s.indices.tolist() for s in stream[n:]] == batches_of(plans(1))[:3]


@pytest.mark.parametrize("world_size, rounds", [(1, 5), (2, 7), (3, 1), (4, 9)])
def test_resume_on_the_same_world_size_yields_exactly_the_following_batches(durations, world_size, rounds):
    plans = planner(durations)
    straight = take_rounds(plans, DataPosition(), world_size, rounds + 6)
    saved = DataPosition.from_state_dict(straight[0][rounds - 1].after.state_dict())
    resumed = take_rounds(plans, resolve_start(saved, plans(saved.epoch)), world_size, 6)
    for rank in range(world_size):
        assert [s.indices.tolist() for s in resumed[rank]] == [s.indices.tolist() for s in straight[rank][rounds:]]


@pytest.mark.parametrize("old_world, new_world, rounds", [(4, 2, 5), (2, 3, 7), (1, 4, 11), (3, 1, 2), (4, 3, 1)])
def test_resume_on_another_world_size_skips_and_repeats_no_utterance(durations, old_world, new_world, rounds):
    plans = planner(durations, seed=11)
    before = take_rounds(plans, DataPosition(), old_world, rounds)
    saved = before[0][-1].after
    after = rest_of_epoch(plans, resolve_start(saved, plans(0)), new_world)
    assert len(real_utterances(before)) == saved.utterances
    seen = sorted(real_utterances(before) + real_utterances(after))  # with multiplicity
    assert seen == sorted(plans(0).order.tolist())
    assert len({len(stream) for stream in after.values()}) == 1


def test_rank_outside_the_world_is_refused(durations):
    with pytest.raises(ValueError, match="rank 2 outside"):
        next(rank_schedule(planner(durations), DataPosition(), rank=2, world_size=2))


# ---------------------------------------------------------------------------------------------
# Two streams


@pytest.mark.parametrize(
    "ratio, pattern",
    [
        (1.0, "LULULULU"),
        (2.0, "LUULUULU"),
        (0.5, "LLULLULL"),
        (3.0, "LUUULUUU"),
    ],
)
def test_unlabeled_turns_follow_the_ratio(ratio, pattern):
    assert "".join("U" if is_unlabeled_turn(c, ratio) else "L" for c in range(len(pattern))) == pattern


@pytest.mark.parametrize("ratio", [1.0, 0.5, 2.0, 0.7, 1 / 3, 1.25, 10.0])
def test_unlabeled_share_of_every_prefix_is_within_one_batch_of_exact(ratio):
    share = ratio / (1 + ratio)
    unlabeled = 0
    for c in range(1, 5001):
        unlabeled += is_unlabeled_turn(c - 1, ratio)
        assert abs(unlabeled - c * share) < 1.0
    assert unlabeled == math.floor(5000 * share + 1e-9)


@pytest.mark.parametrize("counter, ratio", [(-1, 1.0), (0, 0.0), (0, -2.0), (0, math.inf), (0, math.nan)])
def test_unlabeled_turn_rejects_bad_input(counter, ratio):
    with pytest.raises(ValueError):
        is_unlabeled_turn(counter, ratio)
