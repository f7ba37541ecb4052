"""Edit-distance alignment of token sequences: the S, D, I counts behind WER and CER.

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

How it is computed
    The rule is one weighted Levenshtein distance: with insertions and deletions costing W and
    substitutions W + 1, an alignment costs W (S + D + I) + S. For W = min(N, M) + 1, more
    than any pair's S, one error more always costs more than any saving in substitutions, so
    the cheapest alignment is the rule's, and ``divmod(cost, W)`` is (S + D + I, S).
    rapidfuzz computes that cost in C++. Tokens are first interned to small ints, because
    rapidfuzz compares hashes of elements that are not characters (``hash(2**61) == hash(1)``).

    A displayed alignment (:func:`align`) is rapidfuzz's unit-cost alignment when it has the
    rule's counts (almost always); otherwise, e.g. REF "A B", HYP "B A" where it gives S S and
    the rule D C I, the rule's alignment comes from a full dynamic programme over the part
    between the common prefix and suffix, traced back from the end preferring a diagonal step
    (C or S), then a deletion, then an insertion. Either way it is deterministic.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rapidfuzz.distance import Levenshtein

# Alignment operations, as labelled in reports.
CORRECT, SUBSTITUTION, DELETION, INSERTION = "C", "S", "D", "I"
_OPCODE_LABELS = {"equal": CORRECT, "replace": SUBSTITUTION, "delete": DELETION,
                  "insert": INSERTION}

_CHAR_IDS = 0x110000  # ids that fit one str character
Tokens = Sequence[Hashable]


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
        tally = dict.fromkeys((CORRECT, SUBSTITUTION, DELETION, INSERTION), 0)
        for op, _, _ in self.ops:
            tally[op] += 1
        return Counts(tally[CORRECT] + tally[SUBSTITUTION] + tally[DELETION],
                      tally[SUBSTITUTION], tally[DELETION], tally[INSERTION])


def edit_counts_batch(refs: Sequence[Tokens], hyps: Sequence[Tokens]) -> np.ndarray:
    """Counts of many pairs as an int64 ``(pairs, 4)`` array of ``n, S, D, I`` rows.

    Tokens are any hashables compared by equality; a ``str`` is a sequence of characters.
    """
    rows = [(len(r), *_counts(r, h)) for r, h in zip(*_interned(refs, hyps), strict=True)]
    return np.array(rows, dtype=np.int64).reshape(len(rows), 4)


def edit_counts(ref: Tokens, hyp: Tokens) -> Counts:
    """S, D, I of the optimal alignment of one pair (see the module docstring)."""
    return Counts(*(int(x) for x in edit_counts_batch([ref], [hyp])[0]))


def edit_distance(ref: Tokens, hyp: Tokens) -> int:
    """Levenshtein distance (unit costs) between two token sequences."""
    return edit_counts(ref, hyp).errors


def align_batch(refs: Sequence[Tokens], hyps: Sequence[Tokens]) -> list[Alignment]:
    """Optimal alignments of many pairs (for reports)."""
    return [Alignment(tuple(_with_tokens(_blocks(r_ids, h_ids), ref, hyp)))
            for r_ids, h_ids, ref, hyp in zip(*_interned(refs, hyps), refs, hyps, strict=True)]


def align(ref: Tokens, hyp: Tokens) -> Alignment:
    """The optimal alignment of one pair (see the module docstring for the tie rule)."""
    return align_batch([ref], [hyp])[0]


# --- the engine -------------------------------------------------------------------------------


def _interned(refs: Sequence[Tokens], hyps: Sequence[Tokens]) -> tuple[list, list]:
    """The pairs with every token replaced by an id, so that equal ids mean equal tokens.

    An id is one character of a ``str`` (code point = id): rapidfuzz compares characters
    exactly and fast, and a str holds no references for the garbage collector to scan.
    Character strings are ids already.
    """
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    seqs = [*refs, *hyps]
    if all(isinstance(s, str) for s in seqs):
        return list(refs), list(hyps)
    vocab = _Vocabulary()
    try:
        out: list = ["".join(map(vocab.__getitem__, s)) for s in seqs]
    except ValueError:  # more distinct tokens than code points: int ids in lists
        ids: dict[Hashable, int] = {}
        out = [[ids.setdefault(t, len(ids)) for t in s] for s in seqs]
    return out[:len(refs)], out[len(refs):]


class _Vocabulary(dict):
    """Token -> one-character id, assigned in order of first appearance."""

    def __missing__(self, token: Hashable) -> str:
        if len(self) >= _CHAR_IDS:
            raise ValueError("more distinct tokens than unicode code points")
        char = self[token] = chr(len(self))
        return char


def _counts(ref: Sequence[Any], hyp: Sequence[Any]) -> tuple[int, int, int]:
    """(S, D, I) of the rule's alignment, from one weighted distance (module docstring)."""
    n, m = len(ref), len(hyp)
    w = min(n, m) + 1
    errors, subs = divmod(Levenshtein.distance(ref, hyp, weights=(w, w, w + 1)), w)
    dels = (errors - subs + n - m) // 2  # D + I = errors - S and D - I = n - m
    return subs, dels, errors - subs - dels


Block = tuple[str, int, int, int, int]
"""A run of one operation, as rapidfuzz's opcodes: (tag, ref from, ref to, hyp from, hyp to)."""


def _blocks(ref: Sequence[Any], hyp: Sequence[Any]) -> list[Block]:
    """The rule's alignment as runs of one operation each."""
    if ref == hyp:  # the error-free utterances of a good system: no search needed
        return [("equal", 0, len(ref), 0, len(hyp))]
    blocks = Levenshtein.opcodes(ref, hyp).as_list()  # fewest errors, maybe not most hits
    hits = sum(i2 - i1 for tag, i1, i2, _, _ in blocks if tag == "equal")
    subs, dels, _ = _counts(ref, hyp)
    return blocks if hits == len(ref) - subs - dels else _traced_blocks(ref, hyp)


def _traced_blocks(ref: Sequence[Any], hyp: Sequence[Any]) -> list[Block]:
    """The rule's alignment by a full dynamic programme over the weighted costs.

    The common prefix and suffix match (always optimal). In the middle, one numpy step a
    reference token: a row is the diagonal and deletion moves from the row above, then the
    insertion moves along the row as a running minimum of ``cost[j] - W j``.
    """
    shorter = min(len(ref), len(hyp))
    prefix = next((k for k in range(shorter) if ref[k] != hyp[k]), shorter)
    suffix = 0
    while suffix < shorter - prefix and ref[-1 - suffix] == hyp[-1 - suffix]:
        suffix += 1
    r = np.asarray([ord(c) for c in ref] if isinstance(ref, str) else ref)[prefix:len(ref) - suffix]
    h = np.asarray([ord(c) for c in hyp] if isinstance(hyp, str) else hyp)[prefix:len(hyp) - suffix]
    n, m = len(r), len(h)
    w = min(n, m) + 1
    ramp = w * np.arange(m + 1, dtype=np.int64)
    cost = np.empty((n + 1, m + 1), dtype=np.int64)
    cost[0] = ramp
    for i in range(1, n + 1):
        row = cost[i]
        row[0] = w * i
        np.minimum(cost[i - 1, :-1] + np.where(h == r[i - 1], 0, w + 1), cost[i - 1, 1:] + w,
                   out=row[1:])
        row[:] = np.minimum.accumulate(row - ramp) + ramp
    steps: list[Block] = [("equal", len(ref) - suffix, len(ref), len(hyp) - suffix, len(hyp))]
    i, j = n, m
    while i or j:
        a, b = i + prefix, j + prefix  # positions in the whole sequences
        if i and j and cost[i, j] == cost[i - 1, j - 1] + (0 if r[i - 1] == h[j - 1] else w + 1):
            steps.append(("equal" if r[i - 1] == h[j - 1] else "replace", a - 1, a, b - 1, b))
            i, j = i - 1, j - 1
        elif i and cost[i, j] == cost[i - 1, j] + w:
            steps.append(("delete", a - 1, a, b, b))
            i -= 1
        else:
            steps.append(("insert", a, a, b - 1, b))
            j -= 1
    steps.append(("equal", 0, prefix, 0, prefix))
    return steps[::-1]


def _with_tokens(blocks: list[Block], ref: Tokens, hyp: Tokens) -> list[tuple[str, Any, Any]]:
    out: list[tuple[str, Any, Any]] = []
    for tag, i1, i2, j1, j2 in blocks:
        refs = ref[i1:i2] if i2 > i1 else itertools.repeat(None, j2 - j1)
        hyps = hyp[j1:j2] if j2 > j1 else itertools.repeat(None, i2 - i1)
        out.extend(zip(itertools.repeat(_OPCODE_LABELS[tag]), refs, hyps))
    return out
