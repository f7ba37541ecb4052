"""Epoch plans and data positions: which utterances form a micro-batch, and who reads which.

An epoch's plan is built from the utterance durations alone, so it is the same on every rank,
in every DataLoader worker, and for every world size. Ranks then take interleaved micro-batches
of that one global order, and progress is counted in global units (micro-batches of the plan
consumed by all ranks together). This is what lets a run resume exactly, also on a different
number of GPUs; per-rank sampler state is never stored.

Everything here is pure numpy; :mod:`asr.data.loader` adds reading, decoding and collation.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

PLAN_VERSION = 1
"""Bump when the batching algorithm changes, so old positions are not resumed into new plans."""

SORT_WINDOW_BATCHES = 8
"""Utterances of a shuffled bucket are sorted by duration in windows of about this many
batches. On LibriSpeech-like durations with 16 buckets this takes padding from about 4% to
0.7% of the batch at 300 s (the wide tail buckets gain most), while the neighbours an
utterance is batched with still change every epoch."""

_POSITION_STATE_VERSION = 1


class PlanChangedError(ValueError):
    """A stored data position belongs to a plan built from other inputs (config or data)."""


# ---------------------------------------------------------------------------------------------
# Epoch plan


def plan_fingerprint(
    durations: np.ndarray,
    *,
    max_batch_seconds: float,
    num_buckets: int,
    min_duration: float,
    max_duration: float,
    seed: int,
) -> str:
    """Readable identity of a plan's inputs (all but the epoch): ``key=value`` pairs.

    Stored with every data position; comparing two fingerprints names what changed.
    """
    digest = hashlib.sha256(np.ascontiguousarray(durations, dtype=np.float32).tobytes())
    fields = {
        "version": PLAN_VERSION,
        "utterances": len(durations),
        "durations_sha256": digest.hexdigest()[:16],
        "max_batch_seconds": float(max_batch_seconds),
        "num_buckets": int(num_buckets),
        "min_duration": float(min_duration),
        "max_duration": float(max_duration),
        "seed": int(seed),
    }
    return " ".join(f"{key}={value}" for key, value in fields.items())


def describe_plan_change(old: str, new: str) -> str:
    """``key: old -> new`` for every input that differs between two fingerprints."""
    before = dict(item.split("=", 1) for item in old.split())
    after = dict(item.split("=", 1) for item in new.split())
    changed = [f"{key}: {before.get(key, '?')} -> {after.get(key, '?')}"
               for key in sorted(before.keys() | after.keys()) if before.get(key) != after.get(key)]
    return ", ".join(changed) or "nothing"


def _check_plan_inputs(durations: np.ndarray, max_batch_seconds: float, num_buckets: int,
                       min_duration: float, max_duration: float, seed: int, epoch: int) -> None:
    if durations.ndim != 1:
        raise ValueError(f"durations: expected a 1-D array of seconds, got shape {durations.shape}")
    if not np.isfinite(durations).all():
        raise ValueError("durations: expected finite seconds, found NaN or infinity")
    if not max_batch_seconds > 0:
        raise ValueError(f"max_batch_seconds: expected positive seconds, got {max_batch_seconds}")
    if num_buckets < 1:
        raise ValueError(f"num_buckets: expected an integer >= 1, got {num_buckets}")
    if not 0 <= min_duration < max_duration:
        raise ValueError(f"min_duration/max_duration: expected 0 <= min < max, got "
                         f"{min_duration} and {max_duration}")
    if max_duration > max_batch_seconds:
        raise ValueError(f"max_duration ({max_duration} s) exceeds max_batch_seconds "
                         f"({max_batch_seconds} s): the longest utterances would fit no batch")
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch: expected integers >= 0, got seed={seed}, epoch={epoch}")


@dataclass(frozen=True, eq=False)
class EpochPlan:
    """One epoch's micro-batches in order, independent of world size and workers.

    Micro-batch ``b`` holds utterances ``order[cum_utterances[b]:cum_utterances[b + 1]]``
    (indices into the split). ``cum_utterances[b]`` and ``cum_seconds[b]`` are the utterances
    and audio seconds in the first ``b`` micro-batches, so a position maps to exact data seen.
    """

    epoch: int
    order: np.ndarray  # int64 [utterances kept]  split indices, micro-batch after micro-batch
    cum_utterances: np.ndarray  # int64 [num_batches + 1]
    cum_seconds: np.ndarray  # float64 [num_batches + 1]
    padded_seconds: np.ndarray  # float64 [num_batches]  size x longest utterance of each batch
    fingerprint: str

    @classmethod
    def build(
        cls,
        durations: np.ndarray,
        *,
        max_batch_seconds: float,
        num_buckets: int,
        min_duration: float,
        max_duration: float,
        seed: int,
        epoch: int,
    ) -> EpochPlan:
        """Plan an epoch: filter, bucket, shuffle, sort small windows, fill, shuffle batches.

        Buckets hold equal numbers of utterances (boundaries are duration quantiles of the
        kept utterances, the same for every epoch). Within a bucket the order is shuffled with
        a generator seeded by (seed, epoch), sorted by duration in windows of about
        :data:`SORT_WINDOW_BATCHES` batches, then cut greedily so that
        ``len(batch) * max(duration) <= max_batch_seconds``. The batch order is shuffled last,
        so every part of the epoch mixes all durations.
        """
        durations = np.asarray(durations)
        _check_plan_inputs(durations, max_batch_seconds, num_buckets, min_duration, max_duration,
                           seed, epoch)
        seconds = durations.astype(np.float64)
        kept = np.flatnonzero((seconds >= min_duration) & (seconds <= max_duration))
        if kept.size == 0:
            raise ValueError(f"no utterance lasts between min_duration={min_duration} s and "
                             f"max_duration={max_duration} s (of {len(durations)})")
        edges = np.quantile(seconds[kept], np.linspace(0.0, 1.0, num_buckets + 1)[1:-1])
        bucket_of = np.searchsorted(edges, seconds[kept], side="right")
        rng = np.random.default_rng([seed, epoch])

        batches: list[np.ndarray] = []
        for bucket in range(num_buckets):
            members = rng.permutation(kept[bucket_of == bucket])
            if members.size:
                members = _sort_in_windows(members, seconds, max_batch_seconds)
                batches.extend(_fill_greedily(members, seconds, max_batch_seconds))
        batches = [batches[i] for i in rng.permutation(len(batches))]

        sizes = np.array([len(b) for b in batches], dtype=np.int64)
        order = np.concatenate(batches)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        cum_seconds = np.concatenate([[0.0], np.cumsum(seconds[order])])[starts]
        longest = np.maximum.reduceat(seconds[order], starts[:-1])
        fingerprint = plan_fingerprint(
            durations, max_batch_seconds=max_batch_seconds, num_buckets=num_buckets,
            min_duration=min_duration, max_duration=max_duration, seed=seed)
        return cls(epoch=epoch, order=order, cum_utterances=starts, cum_seconds=cum_seconds,
                   padded_seconds=sizes * longest, fingerprint=fingerprint)

    def __len__(self) -> int:
        return len(self.cum_utterances) - 1

    def batch(self, b: int) -> np.ndarray:
        """Split indices of micro-batch ``b`` (0 <= b < len(self))."""
        return self.order[self.cum_utterances[b] : self.cum_utterances[b + 1]]

    @property
    def num_utterances(self) -> int:
        return len(self.order)

    @property
    def seconds(self) -> float:
        """Audio seconds of the kept utterances (one pass, no padding repeats)."""
        return float(self.cum_seconds[-1])

    @property
    def padding_waste(self) -> float:
        """Fraction of padded batch seconds that is padding: 1 - audio / (size x longest)."""
        return 1.0 - self.seconds / float(self.padded_seconds.sum())

    def position(self, batches: int) -> DataPosition:
        """The position after the first ``batches`` micro-batches of this epoch."""
        return DataPosition(epoch=self.epoch, batches=batches,
                            utterances=int(self.cum_utterances[batches]),
                            seconds=float(self.cum_seconds[batches]), plan=self.fingerprint)

    def padded_length(self, world_size: int, start: int = 0) -> int:
        """Micro-batches of this epoch read by ``world_size`` ranks from batch ``start``:
        the rest is padded to whole rounds by repeating the plan's first micro-batches."""
        return start + math.ceil((len(self) - start) / world_size) * world_size


@dataclass(frozen=True, eq=False)
class EpochPlanner:
    """The fixed inputs of a split's plans; ``planner(epoch)`` builds that epoch's plan.

    A small picklable callable, so DataLoader workers (forked or spawned) rebuild the same
    plans themselves instead of receiving them.
    """

    durations: np.ndarray  # float32 [N] seconds
    max_batch_seconds: float
    num_buckets: int
    min_duration: float
    max_duration: float
    seed: int

    def __call__(self, epoch: int) -> EpochPlan:
        return EpochPlan.build(self.durations, max_batch_seconds=self.max_batch_seconds,
                               num_buckets=self.num_buckets, min_duration=self.min_duration,
                               max_duration=self.max_duration, seed=self.seed, epoch=epoch)


def _sort_in_windows(members: np.ndarray, seconds: np.ndarray, max_batch_seconds: float) -> np.ndarray:
    """Sort a shuffled bucket by duration within consecutive windows of a few batches.

    Windows alternate ascending and descending so that neighbours across a window edge have
    similar durations too (the greedy fill runs across edges).
    """
    per_batch = max(1, int(max_batch_seconds // max(float(seconds[members].max()), 1e-3)))
    window = SORT_WINDOW_BATCHES * per_batch
    pieces = []
    for w, start in enumerate(range(0, len(members), window)):
        piece = members[start : start + window]
        ranked = piece[np.argsort(seconds[piece], kind="stable")]
        pieces.append(ranked if w % 2 == 0 else ranked[::-1])
    return np.concatenate(pieces)


def _fill_greedily(members: np.ndarray, seconds: np.ndarray, max_batch_seconds: float) -> list[np.ndarray]:
    """Cut an ordered list into consecutive batches with size x longest <= max_batch_seconds."""
    batches, start, longest = [], 0, 0.0
    for i, duration in enumerate(seconds[members].tolist()):
        longest_with = max(longest, duration)
        if i > start and (i - start + 1) * longest_with > max_batch_seconds:
            batches.append(members[start:i])
            start, longest_with = i, duration
        longest = longest_with
    batches.append(members[start:])
    return batches


# ---------------------------------------------------------------------------------------------
# Data position


@dataclass
class DataPosition:
    """Progress through the data stream in global units, valid for any world size.

    ``batches`` micro-batches of epoch ``epoch``'s plan have been consumed by all ranks
    together; they hold exactly ``utterances`` utterances and ``seconds`` audio seconds
    (padding repeats at an epoch's end are not counted). ``plan`` is the fingerprint of the
    plan's inputs, checked on resume.
    """

    epoch: int = 0
    batches: int = 0
    utterances: int = 0
    seconds: float = 0.0
    plan: str = ""

    def state_dict(self) -> dict[str, Any]:
        return {"version": _POSITION_STATE_VERSION, "epoch": self.epoch, "batches": self.batches,
                "utterances": self.utterances, "seconds": self.seconds, "plan": self.plan}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        state = dict(state)
        version = state.pop("version", None)
        if version != _POSITION_STATE_VERSION:
            raise ValueError(f"data position state: version {version!r}, expected {_POSITION_STATE_VERSION}")
        expected = {"epoch": int, "batches": int, "utterances": int, "seconds": float, "plan": str}
        missing = [key for key in expected if key not in state]
        unknown = [key for key in state if key not in expected]
        if missing or unknown:
            raise ValueError(f"data position state: missing keys {missing}, unknown keys {unknown}")
        for key, kind in expected.items():
            value = state[key]
            if kind is float and isinstance(value, int):
                value = float(value)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"data position state: key '{key}' = {value!r}, expected {kind.__name__}")
            if kind is not str and value < 0:
                raise ValueError(f"data position state: key '{key}' = {value!r}, expected >= 0")
            setattr(self, key, value)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> DataPosition:
        position = cls()
        position.load_state_dict(state)
        return position


def resolve_start(start: DataPosition, plan: EpochPlan) -> DataPosition:
    """Check that ``start`` belongs to ``plan`` (its epoch's plan) and return where to begin.

    A fingerprint mismatch means the config or the data changed since the position was saved:
    its batch count would point into a different order, skipping or repeating utterances, so it
    is refused, naming what changed.
    """
    if start.epoch != plan.epoch:
        raise ValueError(f"data position is in epoch {start.epoch}, plan is for epoch {plan.epoch}")
    if start.plan and start.plan != plan.fingerprint:
        change = describe_plan_change(start.plan, plan.fingerprint)
        raise PlanChangedError(
            f"the stored data position (epoch {start.epoch}, batch {start.batches}) was made by "
            f"another epoch plan; changed: {change}. Resume with the old data settings, or train "
            f"from scratch in a new experiment folder")
    if not start.plan and start.batches > 0:
        raise ValueError(f"data position at batch {start.batches} of epoch {start.epoch} has no plan "
                         f"fingerprint, so it cannot be checked against this plan")
    if start.batches >= len(plan):
        raise ValueError(f"data position at batch {start.batches} of epoch {start.epoch}, but the "
                         f"plan has {len(plan)} micro-batches")
    expected = plan.position(start.batches)
    if start.plan and start.utterances != expected.utterances:
        raise ValueError(f"data position says {start.utterances} utterances precede batch "
                         f"{start.batches}, the plan says {expected.utterances}")
    return expected


# ---------------------------------------------------------------------------------------------
# Ranks


@dataclass(frozen=True)
class ScheduledBatch:
    """One micro-batch of a rank's stream: what to read, and where the stream stands after."""

    epoch: int
    plan_index: int  # position p in the epoch (p >= len(plan) marks a padding repeat)
    indices: np.ndarray  # int64 split indices
    duplicate: bool  # a padding repeat of the plan's first micro-batches
    after: DataPosition  # the position once every rank has taken this round


def rank_schedule(
    plan_for_epoch: Callable[[int], EpochPlan], start: DataPosition, *, rank: int, world_size: int
) -> Iterator[ScheduledBatch]:
    """The infinite micro-batch stream of one rank, from ``start`` on.

    Rank ``r`` takes positions ``p = start.batches + k * world_size + r`` of each epoch plan,
    round after round while a round begins inside the plan; positions past the end repeat the
    plan's first micro-batches (``p % len(plan)``), so every rank yields the same number of
    micro-batches and collectives never wait on a rank that ran dry. Later epochs start at 0.
    ``start`` must come from :func:`resolve_start`.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside [0, world_size={world_size})")
    epoch, first = start.epoch, start.batches
    while True:
        plan = plan_for_epoch(epoch)
        n = len(plan)
        for round_start in range(first, n, world_size):
            p = round_start + rank
            end = round_start + world_size
            after = plan.position(end) if end < n else DataPosition(epoch=epoch + 1, plan=plan.fingerprint)
            yield ScheduledBatch(epoch=epoch, plan_index=p, indices=plan.batch(p % n),
                                 duplicate=p >= n, after=after)
        epoch, first = epoch + 1, 0


# ---------------------------------------------------------------------------------------------
# Two streams


def is_unlabeled_turn(counter: int, unlabeled_per_labeled: float) -> bool:
    """Whether global micro-batch ``counter`` (0, 1, ...) comes from the unlabeled stream.

    With u = unlabeled_per_labeled, micro-batch c is unlabeled when
    floor((c + 1) q) > floor(c q), q = u / (1 + u): the unlabeled share of any prefix differs
    from q by less than one micro-batch, and the decision is a pure function of the counter,
    so every rank makes it identically without communication. ``u`` is taken as the nearest
    fraction with a denominator up to 10^6 and evaluated exactly in integers.
    """
    if counter < 0:
        raise ValueError(f"counter: expected an integer >= 0, got {counter}")
    if not unlabeled_per_labeled > 0 or math.isinf(unlabeled_per_labeled):
        raise ValueError(f"unlabeled_per_labeled: expected a positive finite ratio, got {unlabeled_per_labeled}")
    u = Fraction(unlabeled_per_labeled).limit_denominator(10**6)
    q = u / (1 + u)
    return (counter + 1) * q.numerator // q.denominator > counter * q.numerator // q.denominator
