"""Training metrics without host synchronisation: device-side sums read at the logging
cadence only (:class:`Meter`), and rank 0's record of a run (:class:`RunLog`)."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from asr.pseudo_label import REASONS

WALL_CLOCK_KEYS = ("audio_hours_per_hour", "data_wait_share")
"""Rows' values that measure the machine, not the training: they differ between equal runs."""


class Meter:
    """Sums of one logging interval; read over all ranks, so that the logged loss of a run on
    W ranks covers the same micro-batches as one rank accumulating W times as many."""

    def __init__(self, device: torch.device, world_size: int = 1) -> None:
        self.device = device
        self.world_size = world_size
        self.reset()

    def reset(self) -> None:
        z = lambda: torch.zeros((), device=self.device, dtype=torch.float64)  # noqa: E731
        self.loss, self.pl_loss, self.grad_norm, self.skipped = z(), z(), z(), z()
        self.batches = self.pl_batches = self.steps = 0
        self.seconds = self.padded_seconds = 0.0
        self.pl_counts = torch.zeros(len(REASONS), device=self.device, dtype=torch.float64)
        self.pl_errors = self.pl_words = self.pl_kept_errors = self.pl_kept_words = 0
        self.data_wait_s = 0.0  # this rank's host time blocked on its loaders

    def add_loss(self, loss: torch.Tensor, unlabeled: bool, seconds: float, padded: float) -> None:
        if unlabeled:
            self.pl_loss += loss
            self.pl_batches += 1
        else:
            self.loss += loss
            self.batches += 1
        self.seconds += seconds
        self.padded_seconds += padded

    def add_data_wait(self, seconds: float) -> None:
        """Host time spent waiting for the next micro-batches: an upper bound on the time the
        GPU sat idle for want of data (the host may wait while queued kernels still run)."""
        self.data_wait_s += seconds

    def add_step(self, grad_norm: torch.Tensor, found_inf: torch.Tensor) -> None:
        self.grad_norm += torch.where(found_inf > 0, torch.zeros_like(grad_norm), grad_norm)
        self.skipped += found_inf
        self.steps += 1

    def add_pseudo_labels(self, reason_counts: torch.Tensor) -> None:
        """``PseudoLabels.reason_counts``: summed on the device, read at the next flush."""
        self.pl_counts += reason_counts

    def add_pl_wer(self, errors: int, words: int, kept_errors: int, kept_words: int) -> None:
        """Word errors and reference words of a batch's pseudo-labels against the held-out
        truth: all of them (before the filters) and those the filters kept."""
        self.pl_errors += errors
        self.pl_words += words
        self.pl_kept_errors += kept_errors
        self.pl_kept_words += kept_words

    def flush(self) -> dict[str, float]:
        """Read the sums (the one host sync of a logging interval, and one all-reduce over the
        ranks) and start a new interval. Every rank calls it at the same steps."""
        host = [self.batches, self.pl_batches, self.seconds, self.padded_seconds, self.pl_errors,
                self.pl_words, self.pl_kept_errors, self.pl_kept_words]
        sums = torch.cat([torch.stack([self.loss, self.pl_loss]),
                          torch.tensor(host, dtype=torch.float64, device=self.device), self.pl_counts])
        if self.world_size > 1:
            dist.all_reduce(sums)
        # the gradient norm and the skips come from all-reduced gradients: equal on every rank
        grad_norm, skipped, *values = torch.cat([torch.stack([self.grad_norm, self.skipped]), sums]).tolist()
        (loss, pl_loss, batches, pl_batches, seconds, padded_seconds, pl_errors, pl_words, pl_kept_errors,
         pl_kept_words, *counts) = values
        stats = {
            "loss": loss / batches if batches else float("nan"),  # nan: none in this interval
            "pl_loss": pl_loss / pl_batches if pl_batches else float("nan"),
            "grad_norm": grad_norm / max(self.steps - skipped, 1), "skipped": skipped,
            "batches": batches, "pl_batches": pl_batches,
            # the labels' fates, in intervals with pseudo-labeled batches
            **({f"pl_{reason}": n for reason, n in zip(REASONS, counts, strict=True)} if pl_batches else {}),
            "pl_wer": pl_errors / pl_words if pl_words else float("nan"),  # before the filters
            "pl_wer_kept": pl_kept_errors / pl_kept_words if pl_kept_words else float("nan"),
            "pl_kept_share": counts[0] / sum(counts) if pl_batches and sum(counts) else float("nan"),
            "padding_waste": 1 - seconds / padded_seconds if padded_seconds else 0.0,
            "data_wait_s": self.data_wait_s,
        }
        self.reset()
        return stats


class RunLog:
    """Rank 0's record of a run: TensorBoard scalars and ``metrics.jsonl`` (plots, comparisons).

    Each row holds the step and the exact hours of audio seen, so runs at different kappa are
    compared at matched data seen. A row is one ``write`` of a whole line; a write that fails
    (a full disk) is undone, so the file never holds half a row, and training goes on without
    that row. A torn last line left by a killed process is cut when the log is reopened."""

    def __init__(self, exp_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.path = exp_dir / "metrics.jsonl"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        cut_torn_tail(self.path)
        self._warned = False
        self.tensorboard = SummaryWriter(str(exp_dir / "tensorboard"))

    def write(self, kind: str, step: int, hours: float, values: dict[str, float]) -> None:
        values = {k: float(v) for k, v in values.items()}
        for name, value in values.items():
            if math.isfinite(value):
                self.tensorboard.add_scalar(f"{kind}/{name}", value, step)
        self.tensorboard.add_scalar(f"{kind}/hours_seen", hours, step)
        row = {"kind": kind, "step": step, "hours": hours,
               **{k: (v if math.isfinite(v) else None) for k, v in values.items()}}
        size = os.fstat(self._fd).st_size
        try:
            append_line(self._fd, (json.dumps(row) + "\n").encode())
        except OSError as err:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size)  # no half row
            if not self._warned:
                self._warned = True
                print(f"warning: {self.path}: the {kind} row of step {step} was not written ({err}); "
                      "training goes on, and each later row is tried again", file=sys.stderr)

    def close(self) -> None:
        self.tensorboard.close()
        os.close(self._fd)


def append_line(fd: int, data: bytes) -> None:
    """One ``write`` of a whole line to a file opened with O_APPEND; a short write is an error."""
    written = os.write(fd, data)
    if written != len(data):
        raise OSError(errno.ENOSPC, f"wrote {written} of {len(data)} bytes")


def cut_torn_tail(path: Path) -> None:
    """Cut a last line without its newline: a row whose writer was killed mid-write."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(max(size - 65536, 0))
        tail = f.read()
        if tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n")
        f.truncate(size - len(tail) + cut + 1 if cut >= 0 else max(size - len(tail), 0))
