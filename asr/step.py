"""One optimizer step of the student: the one the trainer runs and every benchmark measures.

A step is ``accum`` micro-batches, all labeled or all pseudo-labeled (slimIPL's alternation, so
a step has the same content at any split of kappa into ranks x accumulation), then the gradient
clip, the optimizer step (skipped on the device when a gradient is non-finite, as under
``GradScaler``), and one EMA update of the teacher: once per optimizer step, never per
micro-batch, and held at its value on a skipped step. Nothing here reads a tensor back to the
host; the only exception is a diagnostic, the pseudo-labels' WER against held-out transcripts,
computed where the unlabeled split carries them.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from asr.data.features import LogMelFeatures
from asr.data.loader import Batch
from asr.data.specaug import SpecAugment
from asr.ema import EMATeacher
from asr.metrics import Meter
from asr.optim import optimizer_step
from asr.pseudo_label import make_pseudo_labels, pseudo_label_wer
from asr.runtime import Runtime
from asr.text.tokenizer import Tokenizer


@dataclass
class StepParts:
    """What one optimizer step works on."""

    model: torch.nn.Module
    """The bare student: its weights are clipped, averaged into the teacher and saved."""
    student: torch.nn.Module
    """``model`` or its DDP wrapper: what the forward and backward passes run through."""
    optimizer: torch.optim.Optimizer
    teacher: EMATeacher | None
    """None until the teacher is created (``ema.start``)."""
    features: LogMelFeatures
    specaug: SpecAugment
    aug_generator: torch.Generator
    """SpecAugment's own random stream (per rank), saved in checkpoints."""
    tokenizer: Tokenizer
    rt: Runtime


@dataclass(frozen=True)
class StepOptions:
    """The step's fixed settings (from ``optim`` and ``pl``)."""

    grad_clip: float = 1.0
    """Global gradient-norm clip; 0 disables."""
    unlabeled_weight: float = 1.0
    """Weight of the pseudo-label loss against the labeled one."""
    min_tokens: int = 1
    """Pseudo-labels with fewer tokens are dropped."""
    min_confidence: float = 0.0
    """Pseudo-labels with a lower mean token probability are dropped."""


class SkippedSteps:
    """Non-finite steps, counted on the device and read at the logging cadence: the current run
    of consecutive ones, the longest run since the last read, and the total."""

    def __init__(self, device: torch.device, total: int = 0) -> None:
        self._run = torch.zeros((), device=device)
        self._longest = torch.zeros((), device=device)
        self._total = torch.full((), float(total), device=device)

    def add(self, found_inf: torch.Tensor) -> None:
        self._run = (self._run + 1) * found_inf
        self._longest = torch.maximum(self._longest, self._run)
        self._total += found_inf

    def read_longest(self) -> int:
        """Longest run of skipped steps since the last read (a host sync)."""
        longest = int(self._longest.item())
        self._longest.zero_()
        return longest

    def total(self) -> int:
        return int(self._total.item())


def train_step(parts: StepParts, micro_batches: Sequence[Batch], *, unlabeled: bool, augment: bool,
               rho: float, options: StepOptions, meter: Meter, skipped: SkippedSteps) -> None:
    """One optimizer step over ``micro_batches`` (this rank's share of the global batch).

    ``unlabeled``: train on the teacher's pseudo-labels instead of the transcripts; ``augment``:
    SpecAugment the student's input; ``rho``: the teacher's momentum for this step.
    """
    rt, student = parts.rt, parts.student
    student.train()
    accum = len(micro_batches)
    for i, batch in enumerate(micro_batches):
        # gradients are averaged across ranks on the last micro-batch only
        last = i == accum - 1
        with contextlib.nullcontext() if last or rt.world_size == 1 else student.no_sync():
            loss = micro_batch_loss(parts, batch, unlabeled=unlabeled, augment=augment,
                                    options=options, meter=meter)
            (loss / accum).backward()

    clip = options.grad_clip if options.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(parts.model.parameters(), clip)
    found_inf = (~torch.isfinite(grad_norm)).float()
    optimizer_step(parts.optimizer, found_inf)
    skipped.add(found_inf)
    meter.add_step(grad_norm, found_inf)
    if parts.teacher is not None:  # held (rho = 1) on a skipped step
        parts.teacher.update(parts.model, torch.where(found_inf > 0, 1.0, rho))


def micro_batch_loss(parts: StepParts, batch: Batch, *, unlabeled: bool, augment: bool,
                     options: StepOptions, meter: Meter) -> torch.Tensor:
    """Loss of one micro-batch: against its transcripts, or against the teacher's greedy labels."""
    rt, tokenizer = parts.rt, parts.tokenizer
    # lengths known on the host, so nothing below reads them back from the device: whether the
    # batch is padded at all (unpadded attention needs no mask), and CTC's output lengths
    padded = bool((batch.lengths < batch.waves.shape[-1]).any())
    host_out_lengths = parts.model.output_lengths(parts.features.frame_lengths(batch.lengths))
    batch = batch.to(rt.device)
    with torch.no_grad():  # fp32 features on the device, outside autocast
        feats, feat_lengths = parts.features(batch.waves, batch.lengths)
    out_lengths = parts.model.output_lengths(feat_lengths)
    if unlabeled:
        if parts.teacher is None:
            raise RuntimeError("a pseudo-labeled step needs the teacher, which does not exist yet")
        with rt.autocast():  # the teacher: eval mode, clean input, no gradients
            teacher_log_probs, teacher_lengths = parts.teacher(feats, feat_lengths, padded=padded)
        labels = make_pseudo_labels(teacher_log_probs, teacher_lengths, out_lengths,
                                    blank_id=tokenizer.blank_id, min_tokens=options.min_tokens,
                                    min_confidence=options.min_confidence)
        targets, target_lengths, keep = labels.targets, labels.target_lengths, labels.keep
        meter.add_pseudo_labels(labels.reason_counts)
        if batch.truths is not None and all(t is not None for t in batch.truths):  # diagnostic only
            hyps = [tokenizer.decode(ids) for ids in labels.token_lists()]
            meter.add_pl_wer(*pseudo_label_wer(hyps, batch.truths, labels.keep.tolist()))
    else:
        targets, target_lengths, min_frames = encode_targets(batch.texts, tokenizer, rt.device)
        keep = min_frames <= out_lengths  # a transcript CTC cannot align is dropped, not fatal
    if batch.placeholder:  # nothing of the micro-batch was readable: run the passes, learn nothing
        keep = torch.zeros_like(keep)
    if augment:
        feats = parts.specaug(feats, feat_lengths, generator=parts.aug_generator)
    with rt.autocast():
        log_probs, _ = parts.student(feats, feat_lengths, padded=padded)
    loss = ctc_loss(log_probs, host_out_lengths, targets, target_lengths, keep)
    if not batch.placeholder:
        meter.add_loss(loss.detach(), unlabeled, batch.seconds, batch.padded_seconds)
    return loss * (options.unlabeled_weight if unlabeled else 1.0)


def ctc_loss(log_probs: torch.Tensor, out_lengths: torch.Tensor, targets: torch.Tensor,
             target_lengths: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean per-utterance CTC loss (summed over frames) over the kept utterances.

    Lengths on the host cost nothing; lengths on a GPU are copied to the host by the CUDA
    kernel's wrapper (a sync): the pseudo-labels' lengths, made by the teacher, are such.
    """
    per_utt = F.ctc_loss(log_probs.float().transpose(0, 1), targets, out_lengths, target_lengths,
                         blank=0, reduction="none", zero_infinity=False)
    per_utt = torch.where(keep, per_utt, torch.zeros_like(per_utt))
    return per_utt.sum() / keep.sum().clamp(min=1)


def encode_targets(texts: list[str], tokenizer: Tokenizer, device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Padded token ids [B, S] and the fewest CTC frames each needs (tokens + repeats) on
    ``device``, and the lengths [B] on the host, where CTC reads them without a sync."""
    ids = [tokenizer.encode(t) for t in texts]
    lengths = [len(x) for x in ids]
    repeats = [sum(a == b for a, b in itertools.pairwise(x)) for x in ids]
    padded = torch.zeros(len(ids), max(max(lengths), 1), dtype=torch.long)
    for row, x in enumerate(ids):
        padded[row, : len(x)] = torch.tensor(x, dtype=torch.long)
    lengths_t = torch.tensor(lengths, dtype=torch.long)
    min_frames = lengths_t + torch.tensor(repeats, dtype=torch.long)
    min_frames[lengths_t == 0] = 1 << 30  # an empty transcript teaches nothing: dropped
    return padded.to(device, non_blocking=True), lengths_t, min_frames.to(device, non_blocking=True)
