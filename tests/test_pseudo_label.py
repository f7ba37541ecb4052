"""Pseudo-labels: teacher best path -> CTC targets, dropped when empty, short or unalignable."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from asr.decode import greedy_decode
from asr.pseudo_label import make_pseudo_labels, pseudo_label_wer


def teacher_output(frames: list[list[int]], vocab: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs whose argmax is the given frame ids, and the teacher lengths."""
    width = max(len(f) for f in frames)
    log_probs = torch.full((len(frames), width, vocab), -10.0)
    for b, row in enumerate(frames):
        for t, i in enumerate(row + [5] * (width - len(row))):  # padding frames say 5
            log_probs[b, t, i] = 0.0
    return log_probs.log_softmax(-1), torch.tensor([len(f) for f in frames])


# frames of the teacher, student output frames, min_tokens -> label, reason
CASES = [
    ([1, 1, 0, 1, 2], 5, 1, [1, 1, 2], "kept"),  # 3 tokens + 1 repeat = 4 <= 5
    ([1, 1, 0, 1, 2], 3, 1, [1, 1, 2], "too_long"),  # 4 > 3
    ([1, 0, 1, 0, 1], 5, 1, [1, 1, 1], "kept"),  # 3 + 2 repeats = 5 <= 5
    ([1, 0, 1, 0, 1], 4, 1, [1, 1, 1], "too_long"),  # only 3 tokens, but repeats need 5 frames
    ([1, 2, 3, 4, 4], 4, 1, [1, 2, 3, 4], "kept"),  # no repeats: one frame per token
    ([0, 0, 0, 0], 4, 1, [], "empty"),
    ([0, 3, 3, 0], 4, 2, [3], "too_short"),
    ([0, 3, 0, 4], 4, 2, [3, 4], "kept"),
    ([0, 0, 0, 0], 4, 2, [], "empty"),
]


@pytest.mark.parametrize(("frames", "student_frames", "min_tokens", "label", "reason"), CASES)
def test_pseudo_label_table(frames, student_frames, min_tokens, label, reason):
    log_probs, lengths = teacher_output([frames])
    pl = make_pseudo_labels(log_probs, lengths, torch.tensor([student_frames]), blank_id=0,
                            min_tokens=min_tokens)
    assert pl.token_lists() == [label]
    assert pl.keep.tolist() == [reason == "kept"]
    assert pl.counts == {"kept": 0, "empty": 0, "too_short": 0, "too_long": 0, "low_confidence": 0} | {reason: 1}


def test_batch_counts_targets_and_padding():
    rows = [case[0] for case in CASES if case[2] == 1]
    student = torch.tensor([case[1] for case in CASES if case[2] == 1])
    log_probs, lengths = teacher_output(rows)
    pl = make_pseudo_labels(log_probs, lengths, student, blank_id=0, min_tokens=1)
    assert pl.counts == {"kept": 3, "empty": 1, "too_short": 0, "too_long": 2, "low_confidence": 0}
    assert sum(pl.counts.values()) == len(rows)
    assert pl.keep.tolist() == [True, False, True, False, True, False]
    assert pl.target_lengths.tolist() == [3, 3, 3, 3, 4, 0]
    # padded to the frame count, known without a host sync, with the blank id
    assert pl.targets.shape == (6, log_probs.shape[1])
    assert pl.targets[0].tolist()[:5] == [1, 1, 2, 0, 0] and set(pl.targets[5].tolist()) == {0}
    assert pl.token_lists() == greedy_decode(log_probs, lengths)  # frames past lengths ignored


def test_too_long_is_exactly_where_the_ctc_loss_is_infinite():
    """The filter keeps a non-empty label iff CTC can align it within the student's frames."""
    g = torch.Generator().manual_seed(0)
    batch, frames, vocab = 64, 12, 4  # few classes: many repeats
    log_probs = (3 * torch.randn(batch, frames, vocab, generator=g)).log_softmax(-1)
    teacher_lengths = torch.randint(1, frames + 1, (batch,), generator=g)
    student_lengths = torch.randint(1, frames + 1, (batch,), generator=g)
    pl = make_pseudo_labels(log_probs, teacher_lengths, student_lengths, blank_id=0, min_tokens=1)
    student_log_probs = torch.randn(frames, batch, vocab, generator=g).log_softmax(-1)
    loss = F.ctc_loss(student_log_probs, pl.targets, student_lengths, pl.target_lengths,
                      reduction="none", zero_infinity=False)
    nonempty = pl.target_lengths > 0
    assert torch.equal(pl.keep[nonempty], torch.isfinite(loss)[nonempty])
    assert 0 < pl.counts["too_long"] < batch and pl.counts["kept"] > 0
    assert (nonempty & ~pl.keep & (pl.target_lengths <= student_lengths)).any()  # repeats decided one


def test_labels_are_made_without_reading_anything_on_the_host(monkeypatch):
    """The training step stays asynchronous: no .item()/.tolist()/bool() of a device tensor."""
    log_probs, lengths = teacher_output([[1, 1, 0, 2], [0, 3, 3, 0]])

    def sync(*_):
        raise AssertionError("host sync in make_pseudo_labels")

    for name in ("item", "tolist", "__bool__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, sync)
    pl = make_pseudo_labels(log_probs, lengths, torch.tensor([4, 4]), blank_id=0, min_tokens=1,
                            min_confidence=0.5)
    monkeypatch.undo()
    assert pl.counts["kept"] + pl.counts["low_confidence"] == 2


def test_min_tokens_below_one_is_an_error():
    log_probs, lengths = teacher_output([[1, 2]])
    with pytest.raises(ValueError, match=r"pl\.min_tokens"):
        make_pseudo_labels(log_probs, lengths, lengths, blank_id=0, min_tokens=0)


@pytest.mark.parametrize(("hyps", "truths", "expected"), [
    (["A B C"], ["A B C"], (0, 3)),
    (["A B D"], ["A B C"], (1, 3)),  # substitution
    (["A C"], ["A B C"], (1, 3)),  # deletion
    (["A B X C"], ["A B C"], (1, 3)),  # insertion
    ([""], ["A B"], (2, 2)),  # an empty pseudo-label deletes every word
    (["A B C", "X"], ["A B C", "D E"], (2, 5)),  # summed over utterances
    ([], [], (0, 0)),
])
def test_pseudo_label_wer_counts(hyps, truths, expected):
    assert pseudo_label_wer(hyps, truths) == (*expected, *expected)  # nothing dropped: kept = all


def test_pseudo_label_wer_counts_the_kept_labels_apart():
    hyps, truths = ["A B C", "X", "A"], ["A B C", "D E", "A B"]
    assert pseudo_label_wer(hyps, truths, [True, False, True]) == (3, 7, 1, 5)
    assert pseudo_label_wer(hyps, truths, [False, False, False]) == (3, 7, 0, 0)


def test_pseudo_label_wer_needs_one_truth_per_hypothesis():
    with pytest.raises(ValueError, match="2 hypotheses but 1 truths"):
        pseudo_label_wer(["A", "B"], ["A"])


@pytest.mark.parametrize(("token_prob", "min_confidence", "kept"), [
    (0.9, 0.0, True),   # the filter off keeps everything
    (0.9, 0.8, True),
    (0.6, 0.8, False),  # an unsure teacher's label is dropped
    (0.6, 0.5, True),
])
def test_min_confidence_drops_labels_the_teacher_is_unsure_of(token_prob, min_confidence, kept):
    """Confidence is the mean best-path probability over the frames that emit a token; sure
    blank frames around them do not raise it."""
    frames = [(0, 0.97), (1, token_prob), (0, 0.97), (2, token_prob), (0, 0.97), (0, 0.97)]
    probs = torch.stack([torch.full((4,), (1 - p) / 3).index_fill(0, torch.tensor([i]), p) for i, p in frames])
    log_probs = probs.log()[None]
    pl = make_pseudo_labels(log_probs, torch.tensor([6]), torch.tensor([6]), blank_id=0, min_tokens=1,
                            min_confidence=min_confidence)
    assert bool(pl.keep[0]) is kept
    assert pl.counts["low_confidence"] == (0 if kept else 1)
    assert sum(pl.counts.values()) == 1


def test_min_confidence_outside_zero_one_is_an_error():
    log_probs, lengths = teacher_output([[1, 2]])
    with pytest.raises(ValueError, match=r"pl\.min_confidence"):
        make_pseudo_labels(log_probs, lengths, lengths, blank_id=0, min_tokens=1, min_confidence=1.0)
