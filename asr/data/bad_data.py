"""Bad data met while training: utterances skipped because their audio does not decode (a
corrupt or truncated shard member) or their text is outside the tokenizer.

One bad file in a large corpus must not stop a run, but a corpus that is mostly bad must not
train quietly on what is left. Every rank counts the reads and skips of its own micro-batches
(host integers, no device work); the counts are summed over the ranks at the logging cadence
and before each checkpoint (one small all-reduce), so every rank holds the same totals, and
every rank stops at the same step once the share of skipped reads passes
``data.max_bad_fraction``. The totals are kept in the checkpoint's ``TrainState``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.distributed as dist

from asr.data.loader import Batch


class TooMuchBadData(RuntimeError):
    """More of a split was skipped than ``data.max_bad_fraction`` allows."""


class BadData:
    """Reads and skipped reads per split, summed over all ranks.

    ``split_sizes``: utterances of each split the run reads (after the duration filter). The
    share is judged against at least one epoch of the split, so a few bad utterances met early
    do not look like a large share of the little read so far.
    """

    def __init__(self, max_fraction: float, split_sizes: Mapping[str, int], *, world_size: int = 1,
                 device: torch.device | str = "cpu", totals: Mapping[str, Mapping[str, int]] | None = None) -> None:
        self.max_fraction = max_fraction
        self.split_sizes = dict(split_sizes)
        self.world_size = world_size
        self.device = torch.device(device)  # where the backend reduces (a GPU under NCCL)
        self.totals = {split: {"read": 0, "skipped": 0} for split in self.split_sizes}
        for split, counts in (totals or {}).items():
            self.totals[split] = {"read": int(counts["read"]), "skipped": int(counts["skipped"])}
        self._pending = {split: [0, 0] for split in self.totals}

    def add(self, split: str, batches: Iterable[Batch]) -> None:
        """Count this rank's micro-batches of ``split`` (their members and the skipped ones)."""
        pending = self._pending.setdefault(split, [0, 0])
        for batch in batches:
            pending[0] += len(batch) + batch.failed
            pending[1] += batch.failed

    def sync(self) -> None:
        """Add every rank's pending counts to the totals; call on every rank at the same step."""
        splits = sorted(self._pending)
        counts = [n for split in splits for n in self._pending[split]]
        if self.world_size > 1:
            summed = torch.tensor(counts, dtype=torch.float64, device=self.device)
            dist.all_reduce(summed)
            counts = [int(n) for n in summed.tolist()]
        for i, split in enumerate(splits):
            total = self.totals.setdefault(split, {"read": 0, "skipped": 0})
            total["read"] += counts[2 * i]
            total["skipped"] += counts[2 * i + 1]
            self._pending[split] = [0, 0]

    def skipped(self) -> int:
        """Skipped reads of every split so far (synced totals)."""
        return sum(counts["skipped"] for counts in self.totals.values())

    def check(self) -> None:
        """Raise :class:`TooMuchBadData`, naming the split and the key, past the allowed share."""
        for split, counts in sorted(self.totals.items()):
            judged = max(counts["read"], self.split_sizes.get(split, 0), 1)
            if counts["skipped"] > self.max_fraction * judged:
                raise TooMuchBadData(
                    f"split {split!r}: {counts['skipped']} of {counts['read']} utterance reads were skipped "
                    f"(audio that does not decode, or text outside the tokenizer; each one is logged), more "
                    f"than data.max_bad_fraction={self.max_fraction:g} of {judged}: repair or re-shard the "
                    f"data (asr prepare, asr shard), or raise data.max_bad_fraction")

    def state_dict(self) -> dict[str, Any]:
        return {split: dict(counts) for split, counts in self.totals.items()}
