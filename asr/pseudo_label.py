"""Teacher output -> pseudo-label targets for the student's CTC loss, and which to keep.

The teacher (the EMA model, in eval mode, under ``no_grad``, on un-augmented features) labels
an unlabeled batch by its best path, as in momentum pseudo-labeling (Higuchi et al. 2021)
and slimIPL (Likhomanenko et al. 2021). A label is dropped when

- it has fewer than ``min_tokens`` tokens (``empty`` when it has none, else ``too_short``):
  training on an empty label teaches the student that speech is silence;
- CTC cannot align it within the student's output frames (``too_long``): CTC needs one frame
  per token plus a blank between each pair of equal adjacent tokens, i.e.
  ``len + repeats <= T``; such a label would have an infinite loss.

Everything is computed on the device for the whole batch, without a host sync: the targets
are padded to the batch's frame count (a kept label never has more tokens than frames) and
the per-reason counts stay a device tensor until the logging interval reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from asr.decode import ctc_keep_frames
from asr.wer import utterance_word_errors

REASONS = ("kept", "empty", "too_short", "too_long", "low_confidence")
"""The fate of each label, in the order of ``PseudoLabels.reason_counts``."""


@dataclass(frozen=True)
class PseudoLabels:
    targets: Tensor  # int64 [B, T]: collapsed teacher tokens, padded with the blank id
    target_lengths: Tensor  # int64 [B]: tokens of each label (also for dropped ones)
    keep: Tensor  # bool [B]: the label is usable as a CTC target for the student
    reason_counts: Tensor  # int64 [len(REASONS)]: labels kept, and dropped for each reason

    @property
    def counts(self) -> dict[str, int]:
        """Per-reason counts on the host (a sync: for tests and tools, not the training step)."""
        return dict(zip(REASONS, self.reason_counts.tolist(), strict=True))

    def token_lists(self) -> list[list[int]]:
        """Every label's tokens on the host (one copy), e.g. to score them against truth."""
        rows = torch.cat([self.target_lengths[:, None], self.targets], dim=1).tolist()
        return [row[1:1 + row[0]] for row in rows]


def make_pseudo_labels(teacher_log_probs: Tensor, teacher_lengths: Tensor,
                       student_out_lengths: Tensor, *, blank_id: int,
                       min_tokens: int, min_confidence: float = 0.0) -> PseudoLabels:
    """Best-path labels of a teacher batch, and the keep/drop decision of each.

    teacher_log_probs: [B, T, V]; teacher_lengths, student_out_lengths: [B] frames. The
    targets are padded ``[B, T]`` (what ``F.ctc_loss`` takes, with ``target_lengths``);
    select the kept rows with ``keep``, or weight a ``reduction="none"`` loss by it.

    ``min_confidence`` drops labels whose confidence, the teacher's mean best-path probability
    over the frames that emit a token, is lower (Kahn et al. 2020 filter pseudo-labels by the
    teacher's score in the same spirit): an early teacher is right mostly where it is sure.
    """
    if not 0.0 <= min_confidence < 1.0:
        raise ValueError(f"pl.min_confidence: got {min_confidence}, expected a probability in [0, 1)")
    if min_tokens < 1:
        raise ValueError(f"pl.min_tokens: got {min_tokens}, expected an integer >= 1")
    best_log_prob, frame_ids = teacher_log_probs.max(dim=-1)
    keep_frame = ctc_keep_frames(frame_ids, teacher_lengths, blank_id)
    lengths = keep_frame.sum(dim=1)
    confidence = (best_log_prob.float().exp() * keep_frame).sum(dim=1) / lengths.clamp(min=1)

    # Scatter kept frames to their position in the label; the others go to a spare column.
    batch, frames = frame_ids.shape
    position = torch.where(keep_frame, keep_frame.cumsum(dim=1) - 1, frames)
    padded = torch.full((batch, frames + 1), blank_id, dtype=torch.long, device=frame_ids.device)
    padded.scatter_(1, position, frame_ids.long())

    in_label = torch.arange(1, frames + 1, device=frame_ids.device) < lengths[:, None]
    repeats = ((padded[:, 1:] == padded[:, :-1]) & in_label).sum(dim=1)
    empty = lengths == 0
    too_short = ~empty & (lengths < min_tokens)
    too_long = ~empty & ~too_short & (lengths + repeats > student_out_lengths)
    low_confidence = ~empty & ~too_short & ~too_long & (confidence < min_confidence)
    keep = ~(empty | too_short | too_long | low_confidence)

    reason_counts = torch.stack([keep.sum(), empty.sum(), too_short.sum(), too_long.sum(),
                                 low_confidence.sum()])
    return PseudoLabels(targets=padded[:, :frames], target_lengths=lengths, keep=keep,
                        reason_counts=reason_counts)


def pseudo_label_wer(hyp_texts: Sequence[str], truth_texts: Sequence[str],
                     keep: Sequence[bool] | None = None) -> tuple[int, int, int, int]:
    """(word errors, reference words) of pseudo-labels against held-out transcripts, scored as
    ``asr eval`` scores (:func:`asr.wer.word_errors`), for all of them and for those ``keep``
    marks (all, if None): one alignment each. Counts, not rates, so the trainer can sum them
    over batches and ranks before dividing."""
    if len(hyp_texts) != len(truth_texts):
        raise ValueError(f"pseudo_label_wer: {len(hyp_texts)} hypotheses but {len(truth_texts)} truths")
    counts = utterance_word_errors(truth_texts, hyp_texts)
    kept = counts[np.asarray(keep, dtype=bool)] if keep is not None else counts
    (errors, words), (kept_errors, kept_words) = counts.sum(axis=0), kept.sum(axis=0)
    return int(errors), int(words), int(kept_errors), int(kept_words)
