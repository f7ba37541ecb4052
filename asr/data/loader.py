"""The distributed, resumable micro-batch loader: shards in, padded waveform batches out.

Who reads what. Every rank and every DataLoader worker builds the same epoch plan from the
index's durations (:class:`asr.data.sampler.EpochPlan`). Rank ``r`` of ``W`` takes plan
positions ``p`` with ``p % W == r``; worker ``k`` of ``K`` takes the rank's micro-batches
``j`` with ``j % K == k``, and DataLoader's round-robin fetching hands them back in the rank's
order. A worker then reads only the members of its own micro-batches, each one positioned
byte-range read of its shard through the index. That is how each rank and worker reads its
own part of the shards while the global order stays independent of world size and workers;
no process scans a tar or decodes audio meant for another.

Every batch carries the data position after its round, so the trainer can checkpoint it
without communication and resume exactly, also on another number of ranks.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from asr.data.audio import AudioDecodeError, resample
from asr.data.sampler import (
    DataPosition,
    EpochPlan,
    EpochPlanner,
    ScheduledBatch,
    rank_schedule,
    resolve_start,
)
from asr.data.shards import SplitIndex, read_audio

if TYPE_CHECKING:
    from asr.config import DataConfig

logger = logging.getLogger(__name__)


@dataclass
class Batch:
    """One rank's micro-batch: zero-padded waveforms with their transcripts and bookkeeping."""

    waves: torch.Tensor  # float32 [B, T_max] zero-padded
    lengths: torch.Tensor  # int64 [B] samples
    keys: list[str]
    texts: list[str]  # "" for unlabeled utterances
    truths: list[str | None] | None  # held-out transcripts when the index has them
    sample_rate: int  # Hz
    seconds: float  # audio seconds in the batch (decoded utterances only)
    padded_seconds: float  # B x T_max / sample_rate
    epoch: int
    position: DataPosition  # where the stream stands once every rank has taken this round
    failed: int  # members skipped: audio that does not decode, or text the tokenizer cannot encode
    duplicate: bool  # a padding repeat that evens out the ranks at the end of an epoch
    placeholder: bool = False  # every member was skipped: one second of silence that trains nothing

    def __len__(self) -> int:
        return len(self.keys)

    def to(self, device: torch.device | str) -> Batch:
        """Tensors moved to ``device`` (asynchronously from pinned memory)."""
        return dataclasses.replace(self, waves=self.waves.to(device, non_blocking=True),
                                   lengths=self.lengths.to(device, non_blocking=True))

    def pin_memory(self) -> Batch:
        """Called by DataLoader's pin-memory thread when ``pin_memory=True``."""
        return dataclasses.replace(self, waves=self.waves.pin_memory(), lengths=self.lengths.pin_memory())


def _already_collated(batch: Batch) -> Batch:
    """DataLoader collate function: the stream yields collated batches already."""
    return batch


class MicroBatchStream(IterableDataset):
    """One rank's infinite stream of decoded micro-batches, split across DataLoader workers."""

    def __init__(self, index: SplitIndex, plan_for_epoch: Callable[[int], EpochPlan],
                 start: DataPosition, *, rank: int, world_size: int,
                 text_ok: Callable[[str], bool] | None = None, speeds: tuple[float, ...] = (1.0,)) -> None:
        super().__init__()
        self.index = index
        self.speeds = speeds
        self.text_ok = text_ok
        self.plan_for_epoch = plan_for_epoch
        self.start = start
        self.rank = rank
        self.world_size = world_size
        self._reported: set[int] = set()  # utterances whose decode failure was logged

    def __iter__(self) -> Iterator[Batch]:
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        schedule = rank_schedule(self.plan_for_epoch, self.start, rank=self.rank,
                                 world_size=self.world_size)
        for j, scheduled in enumerate(schedule):
            if j % num_workers == worker_id:
                yield self.read(scheduled)

    def read(self, scheduled: ScheduledBatch) -> Batch:
        """Decode and collate one micro-batch, skipping members whose audio does not decode or
        whose text ``text_ok`` refuses (each one logged once per reading process, and counted in
        every batch it is missing from). A micro-batch with no member left becomes a placeholder
        rather than an error: every rank must still run its forward and backward passes, or the
        others would wait for it in the gradient all-reduce."""
        index = self.index
        kept: list[int] = []
        waves: list[np.ndarray] = []
        for item in scheduled.indices.tolist():
            # plan item -> (utterance, speed): item = speed's position x utterances + utterance
            speed, i = self.speeds[item // len(index)], item % len(index)
            try:
                if self.text_ok is not None and not self.text_ok(index.text(i)):
                    raise AudioDecodeError(index.key(i), str(index.shard_path(i)),
                                           f"text {index.text(i)!r} has characters the tokenizer cannot encode")
                wave = read_audio(index, i)
                if speed != 1.0:  # played `speed` times faster: read as if at speed x the rate
                    wave = resample(wave, round(index.sample_rate * speed), index.sample_rate)
                waves.append(wave)
                kept.append(i)
            except AudioDecodeError as err:
                if i not in self._reported:
                    self._reported.add(i)
                    logger.warning("skipping an utterance of split %r: %s", index.split, err)
        failed = len(scheduled.indices) - len(kept)
        if not kept:
            return self.placeholder(scheduled, failed)

        lengths = np.array([len(w) for w in waves], dtype=np.int64)
        padded = np.zeros((len(waves), int(lengths.max())), dtype=np.float32)
        for row, wave in zip(padded, waves, strict=True):
            row[: len(wave)] = wave
        sample_rate = index.sample_rate
        return Batch(
            waves=torch.from_numpy(padded),
            lengths=torch.from_numpy(lengths),
            keys=[index.key(i) for i in kept],
            texts=[index.text(i) for i in kept],
            truths=[index.truth(i) for i in kept] if index.has_truth else None,
            sample_rate=sample_rate,
            seconds=float(lengths.sum()) / sample_rate,
            padded_seconds=padded.size / sample_rate,
            epoch=scheduled.epoch,
            position=scheduled.after,
            failed=failed,
            duplicate=scheduled.duplicate,
        )

    def placeholder(self, scheduled: ScheduledBatch, failed: int) -> Batch:
        """One second of silence with an empty transcript: the step drops it from the loss
        (weight zero), so it changes nothing but keeps this rank's passes in step."""
        rate = self.index.sample_rate
        return Batch(waves=torch.zeros(1, rate), lengths=torch.tensor([rate]), keys=[], texts=[""],
                     truths=None, sample_rate=rate, seconds=0.0, padded_seconds=1.0, epoch=scheduled.epoch,
                     position=scheduled.after, failed=failed, duplicate=scheduled.duplicate, placeholder=True)


class BatchLoader:
    """Infinite, resumable micro-batches of one split for one rank.

    ``iter(loader)`` starts a fresh stream at ``start`` (default: epoch 0, batch 0); each
    :class:`Batch` carries the position to save with a checkpoint, and a loader built with that
    position as ``start`` continues the stream: with the same world size it yields exactly the
    batches that would have followed; with another, the epoch goes on with no utterance skipped
    or repeated. Every rank yields the same number of micro-batches per epoch.
    """

    def __init__(
        self,
        index: SplitIndex,
        *,
        max_batch_seconds: float,
        num_buckets: int,
        min_duration: float,
        max_duration: float,
        seed: int,
        rank: int,
        world_size: int,
        num_workers: int,
        start: DataPosition | None = None,
        pin_memory: bool = False,
        prefetch_factor: int = 2,
        text_ok: Callable[[str], bool] | None = None,
        speed_perturb: Sequence[float] = (),
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} / world_size {world_size}: expected 0 <= rank < world_size")
        if num_workers < 0:
            raise ValueError(f"num_workers: expected an integer >= 0, got {num_workers}")
        self.index = index
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.prefetch_factor = prefetch_factor
        self.text_ok = text_ok
        self.speeds = tuple(float(f) for f in speed_perturb) or (1.0,)
        if len(set(self.speeds)) != len(self.speeds) or min(self.speeds) <= 0:
            raise ValueError(f"speed_perturb: expected distinct positive factors, got {list(speed_perturb)}")
        # one plan item per (speed, utterance), batched by its duration at that speed
        durations = np.concatenate([index.duration / speed for speed in self.speeds]).astype(np.float32)
        self.planner = EpochPlanner(durations, max_batch_seconds=max_batch_seconds,
                                    num_buckets=num_buckets, min_duration=min_duration,
                                    max_duration=max_duration, seed=seed)
        requested = start if start is not None else DataPosition()
        self._plan = self.planner(requested.epoch)
        self.start = resolve_start(requested, self._plan)
        logger.info("%s: %d utterances, %.2f h an epoch (%d outside [%g, %g] s dropped); %d micro-batches "
                    "over %d ranks, %d of them padding repeats; %.1f%% padding in batches",
                    index.split, self._plan.num_utterances, self.hours_per_epoch, self.dropped_utterances,
                    min_duration, max_duration, self.batches_per_epoch, world_size,
                    self.duplicate_batches_per_epoch, 100 * self._plan.padding_waste)

    @classmethod
    def from_config(cls, index: SplitIndex, cfg: DataConfig, *, rank: int, world_size: int,
                    start: DataPosition | None = None, pin_memory: bool = False,
                    text_ok: Callable[[str], bool] | None = None) -> BatchLoader:
        """Build from :class:`asr.config.DataConfig` (``cfg.data``)."""
        return cls(index, max_batch_seconds=cfg.max_batch_seconds, num_buckets=cfg.num_buckets,
                   min_duration=cfg.min_duration, max_duration=cfg.max_duration, seed=cfg.seed,
                   rank=rank, world_size=world_size, num_workers=cfg.num_workers, start=start,
                   pin_memory=pin_memory, text_ok=text_ok, speed_perturb=cfg.speed_perturb)

    @property
    def hours_per_epoch(self) -> float:
        """Audio hours of the utterances kept by the duration filter (one pass, no repeats)."""
        return self._plan.seconds / 3600.0

    @property
    def batches_per_epoch(self) -> int:
        """Micro-batches of a full epoch over all ranks, padded to whole rounds (start epoch's
        plan; other epochs' plans differ by a few batches, as their batches are refilled)."""
        return self._plan.padded_length(self.world_size)

    @property
    def duplicate_batches_per_epoch(self) -> int:
        """Padding repeats that make a full epoch a whole number of rounds (< world_size)."""
        return self.batches_per_epoch - len(self._plan)

    @property
    def utterances_per_epoch(self) -> int:
        """Reads of an epoch: every utterance inside the duration limits at every speed."""
        return self._plan.num_utterances

    @property
    def dropped_utterances(self) -> int:
        """Utterances (at one of the speeds, with speed perturbation) outside [min_duration,
        max_duration], never read."""
        return len(self.index) * len(self.speeds) - self._plan.num_utterances

    def __iter__(self) -> Iterator[Batch]:
        stream = MicroBatchStream(self.index, self.planner, self.start, rank=self.rank,
                                  world_size=self.world_size, text_ok=self.text_ok, speeds=self.speeds)
        # a generator of its own: DataLoader would otherwise draw its worker seed from the
        # global RNG, so opening a stream would shift the trainer's dropout stream (the stream
        # itself is deterministic and never uses the worker seed)
        loader = DataLoader(stream, batch_size=None, collate_fn=_already_collated,
                            num_workers=self.num_workers, pin_memory=self.pin_memory,
                            prefetch_factor=self.prefetch_factor if self.num_workers else None,
                            generator=torch.Generator())
        return iter(loader)
