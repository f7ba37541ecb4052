"""Word and character error rates: edit-distance alignment, corpus scores, bootstrap tests.

Alignment rule (used everywhere: counts, reports, pseudo-label WER)
    Unit costs, S = D = I = 1: the total S + D + I of a pair is its Levenshtein distance,
    the same total as ``kaldialign.edit_distance`` and ``jiwer``. Several alignments can reach
    that minimum; of those we take the one with the most correct tokens. Since
    S = N + M - 2C - (S + D + I) for N reference and M hypothesis tokens, this fixes S, D and
    I uniquely for every pair, and is the same as taking the fewest substitutions.

    sclite aligns with weights ins = del = 3, sub = 4 (``kaldialign`` ``sclite_mode=True``), so
    it minimises 3 (S + D + I) + S instead: k more errors cost it nothing if they come with 3k
    fewer substitutions. Its S + D + I can therefore be *larger* than ours, never smaller;
    whenever it equals ours, its S, D and I equal ours too (at equal totals both take the
    fewest substitutions). Example: REF "A A B", HYP "B C C" is 3 S here; sclite weights give
    D D C I I (4 errors) the same cost, 12, and kaldialign's sclite mode reports that one.

    The token sequence of an alignment (which words pair up) is deterministic too: the common
    prefix and suffix match, and the middle is traced back from the end preferring a diagonal
    step (C or S), then a deletion, then an insertion.

Rates
    WER = (S + D + I) / N over words of the normalized text (``str.split``). CER is the same
    over characters of the normalized text *including* the single spaces between words, which
    is what ``jiwer.cer`` computes on the same strings. An utterance with an empty reference
    has no rate of its own (``None``); it adds its insertions to the corpus errors and nothing
    to N. A corpus with N = 0 has no WER either: we report ``None`` (JSON ``null``), never 0 or
    infinity (jiwer returns the bare insertion count there).

Speed
    Counting runs on many pairs at once: tokens are interned to ints, the common prefix and
    suffix are stripped, and the remaining middles are aligned by a numpy dynamic programme,
    one reference position per step for a whole batch of pairs, over a diagonal band of the
    lattice that is widened until it provably holds every optimal path. Full alignments keep
    the band lattice and trace all pairs of a batch back at once.

Confidence
    Bootstrap over utterances (Bisani & Ney, "Bootstrap estimates for confidence intervals in
    ASR performance evaluation", ICASSP 2004): resample utterances with replacement, recompute
    the corpus WER, take percentiles. The paired version resamples the same utterances for two
    systems (also Koehn, "Statistical significance tests for machine translation
    evaluation", EMNLP 2004).
"""

from __future__ import annotations

import itertools
import json
import sys
from collections import defaultdict
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asr.report import (
    SPEAKERS_HEADER,
    alignment_rows,
    format_rate,
    read_transcripts,
    results_row,
    scores_line,
    tsv,
    write_kaldi_text,
    write_trn,
)
from asr.text.normalize import get_normalizer

# Alignment operations: their labels (public, also in reports) and int8 codes (internal).
CORRECT, SUBSTITUTION, DELETION, INSERTION = "C", "S", "D", "I"
_OP_LABELS = (CORRECT, SUBSTITUTION, DELETION, INSERTION)
_C, _S, _D, _I = 0, 1, 2, 3

# The first band holds paths of up to one error per 4 tokens of a middle (which starts and ends
# with an error); pairs whose optimum there has more errors are redone in a wider band.
_GUESS_TOKENS_PER_ERROR = 4
_ROW_BUDGET = 1 << 17  # lattice cells of one DP row over a batch (keeps the row in cache)
_MAX_PAIRS = 4096  # pairs a batch
_LATTICE_BUDGET = 1 << 23  # cells of the stored band lattices of one batch (alignments)
_FIRST_WINDOW = 8  # tokens compared in the first round of the common prefix/suffix scan
_BOOTSTRAP_DRAWS = 1 << 21  # utterance draws a resampling block


# --- counts and alignments --------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    """Edit counts of a hypothesis against a reference: ``n`` reference tokens, S, D, I."""

    n: int
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0

    @property
    def hits(self) -> int:
        return self.n - self.substitutions - self.deletions

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float | None:
        """Errors per reference token; ``None`` when there is no reference token."""
        return self.errors / self.n if self.n else None

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.n + other.n, self.substitutions + other.substitutions,
                      self.deletions + other.deletions, self.insertions + other.insertions)

    @classmethod
    def total(cls, rows: np.ndarray) -> Counts:
        """Sum of a ``(pairs, 4)`` array of ``n, S, D, I`` rows (see :func:`edit_counts_batch`)."""
        n, s, d, i = (int(x) for x in np.asarray(rows, dtype=np.int64).reshape(-1, 4).sum(axis=0))
        return cls(n, s, d, i)


@dataclass(frozen=True)
class Alignment:
    """One optimal alignment: ``(op, ref_token, hyp_token)`` with op in C/S/D/I.

    A deletion has ``hyp_token = None``, an insertion ``ref_token = None``.
    """

    ops: tuple[tuple[str, Hashable | None, Hashable | None], ...]

    @property
    def counts(self) -> Counts:
        tally = dict.fromkeys(_OP_LABELS, 0)
        for op, _, _ in self.ops:
            tally[op] += 1
        return Counts(tally[CORRECT] + tally[SUBSTITUTION] + tally[DELETION],
                      tally[SUBSTITUTION], tally[DELETION], tally[INSERTION])


def edit_counts_batch(refs: Sequence[Sequence[Hashable]],
                      hyps: Sequence[Sequence[Hashable]]) -> np.ndarray:
    """Counts of many pairs as an int64 ``(pairs, 4)`` array of ``n, S, D, I`` rows.

    Tokens are any hashables compared by equality; a ``str`` is a sequence of characters.
    """
    pairs = _Pairs.intern(refs, hyps)
    dist, hits = pairs.costs()
    n, m = pairs.ref_len, pairs.hyp_len
    subs = n + m - 2 * hits - dist
    dels = n - hits - subs
    return np.stack([n, subs, dels, dist - subs - dels], axis=1)


def edit_counts(ref: Sequence[Hashable], hyp: Sequence[Hashable]) -> Counts:
    """S, D, I of the optimal alignment of one pair (see the module docstring)."""
    return Counts(*(int(x) for x in edit_counts_batch([ref], [hyp])[0]))


def edit_distance(ref: Sequence[Hashable], hyp: Sequence[Hashable]) -> int:
    """Levenshtein distance (unit costs) between two token sequences."""
    return edit_counts(ref, hyp).errors


def align_batch(refs: Sequence[Sequence[Hashable]],
                hyps: Sequence[Sequence[Hashable]]) -> list[Alignment]:
    """Optimal alignments of many pairs, computed together (for reports)."""
    pairs = _Pairs.intern(refs, hyps)
    return [
        Alignment(tuple(_ops_with_tokens(codes, ref, hyp)))
        for codes, ref, hyp in zip(pairs.op_codes(), refs, hyps, strict=True)
    ]


def align(ref: Sequence[Hashable], hyp: Sequence[Hashable]) -> Alignment:
    """The optimal alignment of one pair (see the module docstring for the tie rule)."""
    return align_batch([ref], [hyp])[0]


def _ops_with_tokens(codes: np.ndarray, ref: Sequence[Hashable],
                     hyp: Sequence[Hashable]) -> Iterator[tuple[str, Any, Any]]:
    i = j = 0
    for code in codes.tolist():
        if code == _D:
            yield DELETION, ref[i], None
            i += 1
        elif code == _I:
            yield INSERTION, None, hyp[j]
            j += 1
        else:
            yield _OP_LABELS[code], ref[i], hyp[j]
            i += 1
            j += 1


# --- the batched dynamic programme ------------------------------------------------------------


@dataclass
class _Pairs:
    """Token id sequences of many pairs, stored flat: pair b's reference is
    ``ref_ids[ref_start[b] : ref_start[b] + ref_len[b]]`` (likewise the hypothesis)."""

    ref_ids: np.ndarray
    ref_start: np.ndarray
    ref_len: np.ndarray
    hyp_ids: np.ndarray
    hyp_start: np.ndarray
    hyp_len: np.ndarray

    @classmethod
    def intern(cls, refs: Sequence[Sequence[Hashable]],
               hyps: Sequence[Sequence[Hashable]]) -> _Pairs:
        if len(refs) != len(hyps):
            raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
        seqs = [*refs, *hyps]
        lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
        if all(isinstance(s, str) for s in seqs):  # characters: the code point is the id
            text = "".join(seqs).encode("utf-32-le", errors="surrogatepass")
            ids = np.frombuffer(text, dtype="<u4").astype(np.int32)
        else:
            vocab: defaultdict[Hashable, int] = defaultdict()
            vocab.default_factory = vocab.__len__
            ids = np.fromiter(map(vocab.__getitem__, itertools.chain.from_iterable(seqs)),
                              dtype=np.int32, count=int(lengths.sum()))
        starts = np.cumsum(lengths) - lengths
        k = len(refs)
        return cls(ids, starts[:k], lengths[:k], ids, starts[k:], lengths[k:])

    def costs(self) -> tuple[np.ndarray, np.ndarray]:
        """Distance and correct-token count of every pair's optimal alignment."""
        prefix, suffix = self._common_ends()
        n, m = self.ref_len - prefix - suffix, self.hyp_len - prefix - suffix
        dist, hits = n + m, prefix + suffix  # middles with an empty side: only D or only I
        both = np.flatnonzero((n > 0) & (m > 0))
        if len(both):
            middle = self._middles(prefix, suffix, both)
            d, h = middle.exact_band_costs()
            dist[both], hits[both] = d, hits[both] + h
        return dist, hits

    def op_codes(self) -> list[np.ndarray]:
        """Each pair's alignment as an int8 array of op codes (_C, _S, _D, _I), in order."""
        prefix, suffix = self._common_ends()
        n, m = self.ref_len - prefix - suffix, self.hyp_len - prefix - suffix
        traced: dict[int, np.ndarray] = {}
        both = np.flatnonzero((n > 0) & (m > 0))
        if len(both):
            middle = self._middles(prefix, suffix, both)
            dist, _ = middle.exact_band_costs()
            traced = dict(zip(both.tolist(), middle.traced_ops(dist), strict=True))
        one_sided = np.array([_C, _D, _I, _C], np.int8)  # a middle with n = 0 or m = 0
        return [
            np.concatenate([np.full(p, _C, np.int8), traced[b], np.full(s, _C, np.int8)])
            if b in traced else np.repeat(one_sided, (p, n_b, m_b, s))
            for b, (p, n_b, m_b, s) in enumerate(zip(prefix.tolist(), n.tolist(), m.tolist(),
                                                     suffix.tolist(), strict=True))
        ]

    def _middles(self, prefix: np.ndarray, suffix: np.ndarray, which: np.ndarray) -> _Pairs:
        trim = prefix[which] + suffix[which]
        return _Pairs(self.ref_ids, self.ref_start[which] + prefix[which],
                      self.ref_len[which] - trim, self.hyp_ids,
                      self.hyp_start[which] + prefix[which], self.hyp_len[which] - trim)

    def _common_ends(self) -> tuple[np.ndarray, np.ndarray]:
        """Lengths of the common prefix and (non-overlapping) common suffix of every pair.

        Matching them is always optimal: any alignment that leaves an equal first pair
        unmatched can be rewritten to match it without more errors or fewer matches.
        """
        shorter = np.minimum(self.ref_len, self.hyp_len)
        prefix = self._equal_run(self.ref_start, self.hyp_start, 1, shorter)
        last_r = self.ref_start + self.ref_len - 1
        last_h = self.hyp_start + self.hyp_len - 1
        suffix = self._equal_run(last_r, last_h, -1, shorter - prefix)
        return prefix, suffix

    def _equal_run(self, r_from: np.ndarray, h_from: np.ndarray, step: int,
                   limit: np.ndarray) -> np.ndarray:
        """How many tokens are equal walking from r_from/h_from by ``step``, up to ``limit``.

        Compares a window of positions a round, for the pairs still running, doubling the
        window: the work follows the runs' lengths, not the sequences' lengths.
        """
        run = np.zeros_like(limit)
        active = np.flatnonzero(limit > 0)
        window = _FIRST_WINDOW
        while len(active):
            pos = run[active, None] + np.arange(window)
            inside = pos < limit[active, None]
            pos = np.where(inside, pos, 0)
            equal = inside & (self.ref_ids[r_from[active, None] + step * pos]
                              == self.hyp_ids[h_from[active, None] + step * pos])
            equal_all = equal.all(axis=1)
            run[active] += np.where(equal_all, window, equal.argmin(axis=1))
            active = active[equal_all]
            window *= 2
        return run

    def exact_band_costs(self) -> tuple[np.ndarray, np.ndarray]:
        """Costs of the optimal paths, found in bands of the lattice.

        A first pass uses a band that holds every path of up to a guessed number of errors.
        A pair whose banded optimum has more errors than the guess is redone in the band that
        holds every path of as many errors as that optimum: the true optimum is one of them.
        """
        gap = np.abs(self.ref_len - self.hyp_len)
        longer = np.maximum(self.ref_len, self.hyp_len)
        guess = np.maximum(gap, -(-longer // _GUESS_TOKENS_PER_ERROR))
        dist, hits = self._band_costs(guess)
        redo = np.flatnonzero(dist > guess)
        if len(redo):
            sub = _Pairs(self.ref_ids, self.ref_start[redo], self.ref_len[redo],
                         self.hyp_ids, self.hyp_start[redo], self.hyp_len[redo])
            dist[redo], hits[redo] = sub._band_costs(dist[redo])
        return dist, hits

    def _band_costs(self, max_errors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Optimal costs among paths inside the band that holds all paths of ``max_errors``."""
        dist = np.empty(len(max_errors), np.int64)
        hits = np.empty(len(max_errors), np.int64)
        for batch in self._batches(max_errors, keep=False):
            cost, _ = batch.run(keep=False)
            d = -(-cost // batch.weight)  # cost = weight * distance - hits, 0 <= hits < weight
            dist[batch.index], hits[batch.index] = d, d * batch.weight - cost
        return dist, hits

    def traced_ops(self, dist: np.ndarray) -> list[np.ndarray]:
        """Op codes of every pair, traced back through lattice bands that hold every path of
        ``dist`` (the exact distance) errors."""
        out: list[np.ndarray] = [np.empty(0, np.int8)] * len(dist)
        for batch in self._batches(dist, keep=True):
            for b, codes in zip(batch.index.tolist(), batch.trace_back(), strict=True):
                out[b] = codes
        return out

    def _batches(self, max_errors: np.ndarray, *, keep: bool) -> Iterator[_BandBatch]:
        """Pairs grouped by band width, then length, so that a batch wastes little work."""
        order = np.lexsort((self.ref_len, max_errors))
        start = 0
        while start < len(order):
            stop = min(start + _MAX_PAIRS, len(order))
            while True:
                chunk = order[start:stop]
                width = int(max_errors[chunk].max()) + 1
                rows = int(self.ref_len[chunk].max()) + 1
                cells = len(chunk) * width * (rows if keep else 1)
                if cells <= (_LATTICE_BUDGET if keep else _ROW_BUDGET) or len(chunk) == 1:
                    break
                stop = start + max(1, (stop - start) // 2)
            yield _BandBatch.build(self, chunk, max_errors[chunk], width)
            start = stop


def _padded_columns(ids: np.ndarray, start: np.ndarray, length: np.ndarray, height: int,
                    top: np.ndarray | int, pad: int) -> np.ndarray:
    """``(height, pairs)`` array: pair b's sequence in column b from row ``top[b]``, cut at
    ``height``. Pairs run along the fast axis, so that a DP step is one vector operation."""
    out = np.full((height, len(start)), pad, dtype=np.int32)
    top = np.broadcast_to(top, start.shape)
    length = np.clip(height - top, 0, length)
    total = int(length.sum())
    col = np.repeat(np.arange(len(start)), length)
    row = np.arange(total) - np.repeat(np.cumsum(length) - length, length)
    out[top[col] + row, col] = ids[start[col] + row]
    return out


@dataclass(frozen=True)
class _BandBatch:
    """Pairs aligned together, each in a diagonal band of its lattice.

    Along a path with D deletions and I insertions, j - i stays within [-D, I]; with
    D - I = n - m and D + I <= e errors, that is within [-below, above] for
    below = (e + n - m) // 2 and above = (e - n + m) // 2: a band e + 1 cells wide holds every
    path of up to e errors. Lattice cell (i, j) of a pair (i reference and j hypothesis
    tokens consumed) is stored at row i, column c = j - i + below. Its value is
    ``weight * errors - correct`` of the best path to it: minimising it minimises errors
    first, then maximises correct tokens (``weight`` exceeds any count of correct tokens).
    Arrays are indexed ``[row, column, pair]``; pairs are sorted longest reference first.
    """

    index: np.ndarray  # positions of these pairs in the caller's arrays
    ref: np.ndarray  # (rows - 1, B) reference ids, padded with -1
    hyp: np.ndarray  # (rows - 1 + width, B) hypothesis ids from row ``below``, padded with -2
    ref_len: np.ndarray
    hyp_len: np.ndarray
    below: np.ndarray
    width: int

    @classmethod
    def build(cls, pairs: _Pairs, index: np.ndarray, max_errors: np.ndarray,
              width: int) -> _BandBatch:
        longest_first = np.argsort(-pairs.ref_len[index], kind="stable")
        index, max_errors = index[longest_first], max_errors[longest_first]
        n, m = pairs.ref_len[index], pairs.hyp_len[index]
        below = (max_errors + n - m) // 2
        rows = int(n.max()) + 1
        ref = _padded_columns(pairs.ref_ids, pairs.ref_start[index], n, rows - 1, 0, -1)
        hyp = _padded_columns(pairs.hyp_ids, pairs.hyp_start[index], m, rows - 1 + width,
                              below, -2)
        return cls(index, ref, hyp, n, m, below, width)

    @property
    def weight(self) -> int:
        return self.ref.shape[0] + 1  # rows: more than any pair's count of correct tokens

    def run(self, *, keep: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Cost of every pair's best path in its band, and with ``keep`` the band lattices."""
        width, weight, pairs = self.width, self.weight, len(self.index)
        rows = weight
        # Cells with j < 0 start at ``big`` and only grow, by at most ``weight`` a row.
        big = weight * (rows + self.hyp.shape[0] + 2 * width)
        dtype = np.int32 if big + weight * (rows + 2 * width) < 2**31 else np.int64
        column_j = np.arange(width)[:, None] - self.below  # j of each cell of row 0
        prev = np.where(column_j >= 0, weight * column_j, big).astype(dtype)  # j insertions
        lattice = np.empty((rows, width, pairs), dtype=dtype) if keep else None
        if lattice is not None:
            lattice[0] = prev
        cost = np.empty(pairs, np.int64)
        alive = pairs - np.searchsorted(self.ref_len[::-1], np.arange(rows + 1))  # n >= i
        for i in range(1, rows):
            a = alive[i]
            prev = prev[:, :a]
            # diagonal from (i-1, j-1): same column of the previous row, C (-1) or S (+weight)
            equal = self.ref[i - 1, :a] == self.hyp[i - 1 : i - 1 + width, :a]
            cur = prev + np.where(equal, dtype(-1), dtype(weight))
            # deletion from (i-1, j): one column to the right in the previous row
            np.minimum(cur[:-1], prev[1:] + weight, out=cur[:-1])
            # insertion from (i, j-1): the column before in this row
            _relax_insertions(cur, weight)
            if lattice is not None:
                lattice[i, :, :a] = cur
            done = np.arange(alive[i + 1], a)  # pairs whose reference ends at row i
            cost[done] = cur[self.hyp_len[done] - i + self.below[done], done]
            prev = cur
        return cost, lattice

    def trace_back(self) -> list[np.ndarray]:
        """Op codes of every pair, traced from the end: diagonal first, then D, then I."""
        _, lattice = self.run(keep=True)
        weight, last = self.weight, self.width - 1
        b = np.arange(len(self.index))
        i, j = self.ref_len.copy(), self.hyp_len.copy()
        steps = int((i + j).max())
        codes = np.full((steps, len(b)), -1, np.int8)
        for s in range(steps):
            live = (i > 0) | (j > 0)
            c = j - i + self.below
            up = np.maximum(i - 1, 0)
            here = lattice[i, c, b]
            equal = self.ref[up, b] == self.hyp[up + c, b]
            diagonal = live & (i > 0) & (j > 0) & (
                here == lattice[up, c, b] + np.where(equal, -1, weight))
            deletion = live & ~diagonal & (i > 0) & (c < last) & (
                here == lattice[up, np.minimum(c + 1, last), b] + weight)
            insertion = live & ~diagonal & ~deletion
            codes[s] = np.select([diagonal & equal, diagonal, deletion, insertion],
                                 [_C, _S, _D, _I], -1)
            i -= diagonal | deletion
            j -= diagonal | insertion
        return [col[col >= 0][::-1] for col in codes.T]


def _relax_insertions(cur: np.ndarray, weight: int) -> None:
    """In place along each lattice row: cur[c] = min(cur[c], cur[c - 1] + weight)."""
    width, pairs = cur.shape
    if pairs >= width:  # one vector operation over the batch per column
        for c in range(1, width):
            np.minimum(cur[c], cur[c - 1] + weight, out=cur[c])
        return
    shift = 1  # few, wide rows: a log-depth running minimum (Hillis & Steele)
    while shift < width:
        np.minimum(cur[shift:], cur[:-shift] + shift * weight, out=cur[shift:])
        shift *= 2


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


# --- bootstrap --------------------------------------------------------------------------------


def _resampled_sums(columns: Sequence[np.ndarray], n_boot: int, seed: int) -> list[np.ndarray]:
    """Sums of each per-utterance column over ``n_boot`` resamples of the utterances.

    All columns see the same resampled utterances (a paired bootstrap). Deterministic for
    (seed, number of utterances, n_boot).
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    n_utts = len(columns[0])
    rng = np.random.default_rng(seed)
    sums = [np.empty(n_boot, np.int64) for _ in columns]
    per_block = max(1, _BOOTSTRAP_DRAWS // n_utts)
    for lo in range(0, n_boot, per_block):
        hi = min(n_boot, lo + per_block)
        draw = rng.integers(0, n_utts, size=(hi - lo, n_utts), dtype=np.int32)
        for out, col in zip(sums, columns, strict=True):
            out[lo:hi] = np.take(col, draw).sum(axis=1)
    return sums


def _rates(errors: np.ndarray, n: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, errors / np.maximum(n, 1), np.nan)


def bootstrap_ci(errors: np.ndarray, n: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval of sum(errors) / sum(n), resampling utterances.

    ``errors`` and ``n`` are per-utterance arrays. ``None`` when the corpus has no reference
    token. Resamples that happen to hold no reference token are left out.
    """
    errors, n = np.asarray(errors, np.int64), np.asarray(n, np.int64)
    if n.sum() == 0:
        return None
    err_star, n_star = _resampled_sums([errors, n], n_boot, seed)
    alpha = (1.0 - level) / 2
    lo, hi = np.nanquantile(_rates(err_star, n_star), [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def paired_bootstrap(a: CorpusScore, b: CorpusScore, *, n_boot: int = 10000,
                     seed: int = 0) -> dict[str, Any]:
    """Paired bootstrap comparison of two systems scored on the same references.

    Returns the WER difference ``delta = wer_a - wer_b`` (negative: A is better), its 95%
    percentile interval, the probability that A is better (share of resamples with a lower
    WER for A, ties counted half; Bisani & Ney's "probability of improvement"), and a
    two-sided p-value for "no difference": twice the smaller tail share of resampled
    differences on either side of 0, with one added to count and total, capped at 1.
    """
    if a.utt_ids != b.utt_ids or a.refs != b.refs:
        raise ValueError("paired bootstrap needs both systems scored on the same references")
    if a.words.n == 0:
        raise ValueError("paired bootstrap needs at least one reference word")
    n = a.word_counts[:, 0]
    err_a, err_b = a.word_counts[:, 1:].sum(axis=1), b.word_counts[:, 1:].sum(axis=1)
    ea, eb, nn = _resampled_sums([err_a, err_b, n], n_boot, seed)
    keep = nn > 0
    delta = (ea[keep] - eb[keep]) / nn[keep]
    total = len(delta)
    below, above = int((delta < 0).sum()), int((delta > 0).sum())
    ties = total - below - above
    lo, hi = np.quantile(delta, [0.025, 0.975])
    tail = min(below + ties, above + ties)
    return {
        "wer_a": a.wer, "wer_b": b.wer, "delta": a.wer - b.wer,
        "delta_ci95": [float(lo), float(hi)],
        "p_value": min(1.0, 2.0 * (tail + 1) / (total + 1)),
        "prob_a_better": (below + 0.5 * ties) / total,
        "n_boot": n_boot, "seed": seed,
    }


# --- reports ----------------------------------------------------------------------------------


def write_reports(score: CorpusScore, out_dir: str | Path, *, name: str,
                  comparison: Mapping[str, Any] | None = None) -> None:
    """Write one scored set's report files into ``out_dir``:

    - ``hyp.txt``: normalized hypotheses, Kaldi text (a missing one as its id alone, which
      scores the same: all deletions), so that the folder can be rescored;
    - ``ref.trn``, ``hyp.trn``: normalized texts as sclite trn, for
      ``sclite -r ref.trn trn -h hyp.trn trn -i rm`` (whose alignment costs differ: see the
      module docstring);
    - ``alignments.txt``: per utterance, ``REF:``/``HYP:``/``EVAL:`` rows and its counts;
    - ``speakers.tsv``: counts and rates (percent) per speaker;
    - ``summary.json``: the system ``name``, :meth:`CorpusScore.summary` (rates as fractions)
      and, if given, ``comparison`` (a :func:`paired_bootstrap` result) under ``compare``;
    - ``results_row.md``: one markdown row under :data:`asr.report.RESULTS_HEADER`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_kaldi_text(out / "hyp.txt", zip(score.utt_ids, score.hyps, strict=True))
    write_trn(out / "ref.trn", zip(score.utt_ids, score.refs, strict=True))
    write_trn(out / "hyp.trn", zip(score.utt_ids, score.hyps, strict=True))
    _write_alignments(out / "alignments.txt", score, name)
    (out / "speakers.tsv").write_text(tsv(SPEAKERS_HEADER, (
        (s.speaker, s.n_utterances, s.words.n, s.words.substitutions, s.words.deletions,
         s.words.insertions, format_rate(s.words.rate), s.chars.n, format_rate(s.chars.rate))
        for s in score.per_speaker())), encoding="utf-8")
    summary = {"name": name, **score.summary()}
    if comparison is not None:
        summary["compare"] = dict(comparison)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    w = score.words
    (out / "results_row.md").write_text(results_row(
        name, w.rate, score.cer, w.n, w.substitutions, w.deletions, w.insertions,
        score.wer_ci95) + "\n", encoding="utf-8")


def _write_alignments(path: Path, score: CorpusScore, name: str) -> None:
    alignments = align_batch([r.split() for r in score.refs], [h.split() for h in score.hyps])
    with path.open("w", encoding="utf-8") as f:
        f.write(f"# {name}: words aligned with the fewest errors (unit costs), then the most "
                f"correct words; EVAL marks S, D, I\n")
        for utt, alignment in zip(score.utterances(), alignments, strict=True):
            ref_row, hyp_row, eval_row = alignment_rows(alignment.ops)
            w = utt.words
            note = "  (no hypothesis: scored as empty)" if utt.missing else ""
            scores = scores_line(w.hits, w.substitutions, w.deletions, w.insertions, w.n, w.rate)
            f.write(f"\nid: {utt.utt_id}  speaker: {utt.speaker}{note}\n"
                    f"{ref_row}\n{hyp_row}\n{eval_row}\n{scores}\n")


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
    print(json.dumps(summary) if as_json else _text_summary(summary, ref, hyp, out_dir))
    return summary


def _text_summary(s: dict[str, Any], ref: Path, hyp: Path, out_dir: Path | None) -> str:
    """A few lines for people; ``s`` is the summary dict that ``--json`` prints."""
    ci = s["wer_ci95"]
    ci_text = "" if ci is None else f" [{format_rate(ci[0])}, {format_rate(ci[1])}] 95% CI"
    lines = [
        f"{hyp} vs {ref}: {s['n_utterances']} utterances, normalize={s['normalize']}",
        f"WER {format_rate(s['wer'])}%{ci_text}  (S {s['substitutions']}, D {s['deletions']}, "
        f"I {s['insertions']}; N {s['n_words']} words)",
        f"CER {format_rate(s['cer'])}%  (S {s['char_substitutions']}, D {s['char_deletions']}, "
        f"I {s['char_insertions']}; N {s['n_chars']} characters)",
    ]
    if "compare" in s:
        other, test = s["compare"], s["compare"]["paired_bootstrap"]
        lo, hi = test["delta_ci95"]
        lines.append(
            f"vs {other['hyp']}: WER {format_rate(other['wer'])}%; difference "
            f"{100 * test['delta']:+.2f} points [{100 * lo:+.2f}, {100 * hi:+.2f}] 95% CI, "
            f"p = {test['p_value']:.4f}, P({hyp.name} better) = {test['prob_a_better']:.3f} "
            f"(paired bootstrap, {test['n_boot']} resamples)")
    if out_dir is not None:
        lines.append(f"reports: {out_dir}")
    return "\n".join(lines)
