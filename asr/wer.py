"""Word and character error rates of a corpus: per-utterance counts, speakers, intervals.

Rates
    WER = (S + D + I) / N over words of the normalized text (``str.split``). CER is the same
    over characters of the normalized text *including* the single spaces between words, which
    is what ``jiwer.cer`` computes on the same strings. An utterance with an empty reference
    has no rate of its own (``None``); it adds its insertions to the corpus errors and nothing
    to N. A corpus with N = 0 has no WER either: we report ``None`` (JSON ``null``), never 0 or
    infinity (jiwer returns the bare insertion count there).

The parts live in their own modules and are re-exported here, so ``asr.wer`` stays the one
import for scoring: the alignment rule and S/D/I counts in :mod:`asr.edit_distance`, bootstrap
intervals and the paired test in :mod:`asr.bootstrap`, the report folder in
:mod:`asr.score_report`, file formats in :mod:`asr.report`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asr.bootstrap import bootstrap_ci, paired_bootstrap_test
from asr.edit_distance import (
    CORRECT,
    DELETION,
    INSERTION,
    SUBSTITUTION,
    Alignment,
    Counts,
    align,
    align_batch,
    edit_counts,
    edit_counts_batch,
    edit_distance,
)
from asr.report import format_rate, read_transcripts
from asr.score_report import text_summary, write_reports
from asr.text.normalize import get_normalizer

__all__ = [
    "CORRECT", "DELETION", "INSERTION", "SUBSTITUTION", "Alignment", "CorpusScore", "Counts",
    "SpeakerScore", "UtteranceScore", "align", "align_batch", "bootstrap_ci", "edit_counts",
    "edit_counts_batch", "edit_distance", "format_rate", "librispeech_speaker",
    "paired_bootstrap", "score_corpus", "score_files", "write_reports",
]


# --- corpus scores ----------------------------------------------------------------------------


@dataclass(frozen=True)
class UtteranceScore:
    """One utterance: normalized texts and word/character counts."""

    utt_id: str
    speaker: str
    ref: str
    hyp: str
    words: Counts
    chars: Counts
    missing: bool
    """No hypothesis was given: scored as an empty one (all deletions)."""


@dataclass(frozen=True)
class SpeakerScore:
    speaker: str
    n_utterances: int
    words: Counts
    chars: Counts


@dataclass(frozen=True, eq=False)
class CorpusScore:
    """Corpus WER/CER with the counts of every utterance, in reference order.

    Per-utterance counts are ``(utterances, 4)`` arrays of ``n, S, D, I`` rows, so that
    corpus sums and bootstrap resampling stay vector operations at any corpus size.
    """

    utt_ids: list[str]
    speakers: list[str]
    refs: list[str]
    """Normalized reference texts."""
    hyps: list[str]
    """Normalized hypothesis texts ("" where missing)."""
    word_counts: np.ndarray
    char_counts: np.ndarray
    missing_ids: list[str]
    """Reference ids without a hypothesis (scored as all deletions)."""
    extra_ids: list[str]
    """Hypothesis ids without a reference (ignored)."""
    wer_ci95: tuple[float, float] | None
    """95% bootstrap percentile interval of the WER (fractions); None when N = 0."""
    normalize: str
    n_boot: int
    seed: int

    @property
    def words(self) -> Counts:
        return Counts.total(self.word_counts)

    @property
    def chars(self) -> Counts:
        return Counts.total(self.char_counts)

    @property
    def wer(self) -> float | None:
        return self.words.rate

    @property
    def cer(self) -> float | None:
        return self.chars.rate

    def utterances(self) -> Iterator[UtteranceScore]:
        missing = set(self.missing_ids)
        rows = zip(self.utt_ids, self.speakers, self.refs, self.hyps, self.word_counts.tolist(),
                   self.char_counts.tolist(), strict=True)
        for u, spk, ref, hyp, w, c in rows:
            yield UtteranceScore(u, spk, ref, hyp, Counts(*w), Counts(*c), u in missing)

    def per_speaker(self) -> list[SpeakerScore]:
        """Counts summed over each speaker's utterances; numeric speaker ids in numeric order."""
        names = sorted(set(self.speakers), key=_speaker_order)
        position = {s: k for k, s in enumerate(names)}
        which = np.fromiter(map(position.__getitem__, self.speakers), np.int64, len(self.speakers))
        n_utts = np.bincount(which, minlength=len(names))
        words, chars = (np.stack([np.bincount(which, weights=col, minlength=len(names))
                                  for col in counts.T], axis=1).astype(np.int64)
                        for counts in (self.word_counts, self.char_counts))
        rows = zip(names, n_utts.tolist(), words.tolist(), chars.tolist(), strict=True)
        return [SpeakerScore(name, k, Counts(*w), Counts(*c)) for name, k, w, c in rows]

    def summary(self) -> dict[str, Any]:
        """Everything but the per-utterance rows, as one JSON-ready dict (rates as fractions)."""
        w, c = self.words, self.chars
        return {
            "wer": w.rate, "cer": c.rate,
            "wer_ci95": list(self.wer_ci95) if self.wer_ci95 else None,
            "n_utterances": len(self.utt_ids), "n_words": w.n, "n_chars": c.n,
            "substitutions": w.substitutions, "deletions": w.deletions, "insertions": w.insertions,
            "char_substitutions": c.substitutions, "char_deletions": c.deletions,
            "char_insertions": c.insertions,
            "empty_references": int((self.word_counts[:, 0] == 0).sum()),
            "missing_hypotheses": {"count": len(self.missing_ids), "ids": self.missing_ids},
            "extra_hypotheses": {"count": len(self.extra_ids), "ids": self.extra_ids},
            "normalize": self.normalize,
            "bootstrap": {"n_boot": self.n_boot, "seed": self.seed},
            "speakers": [
                {"speaker": s.speaker, "n_utterances": s.n_utterances, "n_words": s.words.n,
                 "wer": s.words.rate, "cer": s.chars.rate, "substitutions": s.words.substitutions,
                 "deletions": s.words.deletions, "insertions": s.words.insertions}
                for s in self.per_speaker()
            ],
        }


def _speaker_order(speaker: str) -> tuple[int, int, str]:
    numeric = speaker.isascii() and speaker.isdigit()
    return (0, int(speaker), speaker) if numeric else (1, 0, speaker)


def librispeech_speaker(utt_id: str) -> str:
    """LibriSpeech ids are ``speaker-chapter-utterance``: the speaker is the first field."""
    return utt_id.partition("-")[0]


def utterance_word_errors(refs: Sequence[str], hyps: Sequence[str], *,
                          normalize: str = "librispeech") -> np.ndarray:
    """int64 [N, 2]: word errors S + D + I and reference words of each pair, normalized as
    :func:`score_corpus` normalizes them."""
    if len(refs) != len(hyps):
        raise ValueError(f"word_errors: {len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        return np.zeros((0, 2), dtype=np.int64)
    norm = get_normalizer(normalize)
    counts = edit_counts_batch([norm(t).split() for t in refs], [norm(t).split() for t in hyps])
    words, subs, dels, ins = counts.T.astype(np.int64)
    return np.stack([subs + dels + ins, words], axis=1)


def word_errors(refs: Sequence[str], hyps: Sequence[str], *, normalize: str = "librispeech") -> tuple[int, int]:
    """(word errors S + D + I, reference words) of paired transcripts: the one WER of
    training's dev evaluation, of the pseudo-labels' quality and of ``asr eval``. Counts, not a
    rate, so sums over batches and ranks stay exact."""
    errors, words = utterance_word_errors(refs, hyps, normalize=normalize).sum(axis=0)
    return int(errors), int(words)


def score_corpus(refs: Mapping[str, str], hyps: Mapping[str, str], *,
                 normalize: str = "librispeech", speakers: Mapping[str, str] | None = None,
                 n_boot: int = 1000, seed: int = 0) -> CorpusScore:
    """Score hypotheses against references, both keyed by utterance id.

    Both sides go through the same text normalizer (``librispeech`` or ``none``). A reference
    without a hypothesis is scored as all deletions and listed in ``missing_ids``; hypotheses
    without a reference are listed in ``extra_ids`` and ignored. ``speakers`` maps utterance
    id to speaker (default: :func:`librispeech_speaker`).
    """
    if not refs:
        raise ValueError("no reference utterances to score")
    norm = get_normalizer(normalize)
    ids = list(refs)
    if speakers is None:
        speaker_of = list(map(librispeech_speaker, ids))
    else:
        unknown = [u for u in ids if u not in speakers]
        if unknown:
            raise ValueError(f"speaker map has no entry for {len(unknown)} utterance(s), "
                             f"e.g. {unknown[0]!r}")
        speaker_of = [speakers[u] for u in ids]
    ref_text = [norm(refs[u]) for u in ids]
    hyp_text = [norm(hyps[u]) if u in hyps else "" for u in ids]
    words = edit_counts_batch([t.split() for t in ref_text], [t.split() for t in hyp_text])
    chars = edit_counts_batch(ref_text, hyp_text)
    return CorpusScore(
        utt_ids=ids, speakers=speaker_of, refs=ref_text, hyps=hyp_text,
        word_counts=words, char_counts=chars,
        missing_ids=[u for u in ids if u not in hyps], extra_ids=[u for u in hyps if u not in refs],
        wer_ci95=bootstrap_ci(words[:, 1:].sum(axis=1), words[:, 0], n_boot=n_boot, seed=seed),
        normalize=normalize, n_boot=n_boot, seed=seed,
    )


# --- comparing two systems -------------------------------------------------------------------


def paired_bootstrap(a: CorpusScore, b: CorpusScore, *, n_boot: int = 10000,
                     seed: int = 0) -> dict[str, Any]:
    """Paired bootstrap comparison of two systems' WER on the same references.

    ``wer_a``, ``wer_b`` and the keys of :func:`asr.bootstrap.paired_bootstrap_test`:
    ``delta = wer_a - wer_b`` (negative: A is better), its 95% interval, ``p_value`` and
    ``prob_a_better``.
    """
    if a.utt_ids != b.utt_ids or a.refs != b.refs:
        raise ValueError("paired bootstrap needs both systems scored on the same references")
    if a.words.n == 0:
        raise ValueError("paired bootstrap needs at least one reference word")
    test = paired_bootstrap_test(a.word_counts[:, 1:].sum(axis=1), b.word_counts[:, 1:].sum(axis=1),
                                 a.word_counts[:, 0], n_boot=n_boot, seed=seed)
    return {"wer_a": a.wer, "wer_b": b.wer, **test}


# --- asr score --------------------------------------------------------------------------------


def score_files(ref: Path, hyp: Path, *, fmt: str = "auto", compare: Path | None = None,
                normalize: str = "librispeech", out_dir: Path | None = None,
                as_json: bool = False, seed: int = 0, name: str | None = None) -> dict[str, Any]:
    """``asr score``: score transcript files, print the result, optionally write reports.

    Prints one JSON object (``as_json``) or a short text summary on stdout; missing and extra
    hypothesis ids are also reported on stderr. With ``compare``, a second hypothesis file is
    scored and tested against the first with the paired bootstrap. Returns the summary.
    """
    name = name or str(hyp)
    refs = read_transcripts(ref, fmt)
    if not refs:
        raise ValueError(f"{ref}: no reference transcripts")
    score = score_corpus(refs, read_transcripts(hyp, fmt), normalize=normalize, seed=seed)
    summary = {"name": name, **score.summary()}
    if compare is not None:
        other = score_corpus(refs, read_transcripts(compare, fmt), normalize=normalize, seed=seed)
        summary["compare"] = {"hyp": str(compare), "wer": other.wer, "cer": other.cer,
                              "missing_hypotheses": len(other.missing_ids),
                              "paired_bootstrap": paired_bootstrap(score, other, seed=seed)}
    if out_dir is not None:
        write_reports(score, out_dir, name=name, comparison=summary.get("compare"))
    for ids, problem in ((score.missing_ids, "reference id(s) without a hypothesis, scored as "
                                             "all deletions"),
                         (score.extra_ids, f"hypothesis id(s) not in {ref}, ignored")):
        if ids:
            shown = " ".join(ids[:5]) + (f" ... (+{len(ids) - 5} more)" if len(ids) > 5 else "")
            print(f"asr score: {hyp}: {len(ids)} {problem}: {shown}", file=sys.stderr)
    print(json.dumps(summary) if as_json else text_summary(summary, ref, hyp, out_dir))
    return summary
