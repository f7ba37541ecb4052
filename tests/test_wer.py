"""WER/CER scoring: the alignment rule, agreement with jiwer and kaldialign, corpus conventions
and the bootstrap. jiwer and kaldialign are test-only references."""

from __future__ import annotations

import random

import jiwer
import kaldialign
import numpy as np
import pytest

from asr.edit_distance import (
    Counts,
    align,
    align_batch,
    edit_counts,
    edit_counts_batch,
    edit_distance,
)
from asr.wer import bootstrap_ci, paired_bootstrap, score_corpus


def textbook_counts(ref, hyp) -> tuple[int, int, int, int]:
    """(n, S, D, I) by the plain O(n m) recursion over (errors, -correct), no tricks."""
    n, m = len(ref), len(hyp)
    best = [[(0, 0)] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        for j in range(m + 1):
            options = []
            if i and j:
                same = ref[i - 1] == hyp[j - 1]
                e, c = best[i - 1][j - 1]
                options.append((e + (not same), c - same))
            if i:
                e, c = best[i - 1][j]
                options.append((e + 1, c))
            if j:
                e, c = best[i][j - 1]
                options.append((e + 1, c))
            best[i][j] = min(options) if options else (0, 0)
    errors, correct = best[n][m][0], -best[n][m][1]
    subs = n + m - 2 * correct - errors
    dels = n - correct - subs
    return n, subs, dels, errors - subs - dels


def random_pairs(count: int, seed: int, *, vocab: int, max_len: int) -> tuple[list, list]:
    rng = random.Random(seed)
    refs, hyps = [], []
    for _ in range(count):
        v = rng.randint(1, vocab)  # small vocabularies make many equally short alignments
        refs.append([rng.randrange(v) for _ in range(rng.randint(0, max_len))])
        hyps.append([rng.randrange(v) for _ in range(rng.randint(0, max_len))])
    return refs, hyps


def noisy_copy(words: list[str], rng: random.Random, vocab: list[str], rate: float) -> list[str]:
    out = []
    for w in words:
        u = rng.random()
        if u < rate / 3:
            out.append(rng.choice(vocab))
        elif u < 2 * rate / 3:
            continue
        elif u < rate:
            out += [w, rng.choice(vocab)]
        else:
            out.append(w)
    return out


def random_corpus(count: int, seed: int, rate: float = 0.1) -> tuple[dict[str, str], dict[str, str]]:
    rng = random.Random(seed)
    vocab = ["".join(rng.choice("ABCDEFGHIJKLMNOPRSTUW") for _ in range(rng.randint(1, 8)))
             for _ in range(300)]
    refs, hyps = {}, {}
    for k in range(count):
        words = [rng.choice(vocab) for _ in range(rng.randint(1, 30))]
        utt = f"{rng.randint(1, 9)}-{k // 10}-{k:04d}"
        refs[utt], hyps[utt] = " ".join(words), " ".join(noisy_copy(words, rng, vocab, rate))
    return refs, hyps


def op_string(ref: str, hyp: str) -> str:
    return "".join(op for op, _, _ in align(ref.split(), hyp.split()).ops)


# --- the alignment rule -----------------------------------------------------------------------


@pytest.mark.parametrize(("ref", "hyp", "ops"), [
    ("A B C", "A B C", "CCC"),
    ("A B C", "A X C", "CSC"),
    ("A B C", "A C", "CDC"),
    ("A C", "A B C", "CIC"),
    ("A B", "", "DD"),
    ("", "A B", "II"),
    ("", "", ""),
    ("A", "B", "S"),
    # S S has as many errors as D C I; the rule keeps the correct B
    ("A B", "B C", "DCI"),
    # 3 S is the minimum; sclite's weights would give D D C I I (4 errors) the same cost
    ("A A B", "B C C", "SSS"),
    ("A B C D", "X A B C D Y", "ICCCCI"),
    ("THE CAT SAT", "THE THE CAT SAT", "CICC"),
])
def test_alignment_by_example(ref, hyp, ops):
    assert op_string(ref, hyp) == ops


def test_alignment_carries_the_tokens_and_their_counts():
    alignment = align(["A", "B", "C", "D"], ["A", "X", "D", "E"])
    # traced back from the end preferring a diagonal step: C pairs with X, B is deleted
    assert alignment.ops == (("C", "A", "A"), ("D", "B", None), ("S", "C", "X"),
                             ("C", "D", "D"), ("I", None, "E"))
    assert alignment.counts == Counts(n=4, substitutions=1, deletions=1, insertions=1)


@pytest.mark.parametrize(("seed", "vocab", "max_len"), [
    (0, 5, 14),  # small vocabularies: many alignments with the fewest errors, few with most hits
    (10, 2, 30),
    (11, 40, 20),
    (12, 3000, 25),  # LibriSpeech-like: almost every token distinct
])
def test_counts_follow_the_rule_on_random_pairs(seed, vocab, max_len):
    refs, hyps = random_pairs(3000, seed=seed, vocab=vocab, max_len=max_len)
    got = edit_counts_batch(refs, hyps)
    assert got.shape == (3000, 4)
    for ref, hyp, row, alignment in zip(refs, hyps, got.tolist(), align_batch(refs, hyps),
                                        strict=True):
        expected = textbook_counts(ref, hyp)
        assert tuple(row) == expected, (ref, hyp)
        assert alignment.counts == Counts(*expected), (ref, hyp)


def test_tokens_are_compared_by_equality_not_by_hash():
    assert hash(2**61) == hash(1) and hash(-1) == hash(-2)
    assert edit_counts([2**61, -1, "A"], [1, -2, "A"]) == Counts(3, 2, 0, 0)
    assert edit_counts([(1, "X"), 2.5], [(1, "X"), 2.5]) == Counts(2)


def test_more_distinct_tokens_than_unicode_code_points_still_count(monkeypatch):
    refs, hyps = random_pairs(300, seed=5, vocab=50, max_len=12)
    expected = edit_counts_batch(refs, hyps)
    monkeypatch.setattr("asr.edit_distance._CHAR_IDS", 10)  # ids as ints in lists instead
    assert (edit_counts_batch(refs, hyps) == expected).all()
    assert [a.counts for a in align_batch(refs, hyps)] == [Counts(*row) for row in expected.tolist()]


def test_total_errors_equal_kaldialign_on_random_pairs():
    refs, hyps = random_pairs(3000, seed=1, vocab=8, max_len=25)
    got = edit_counts_batch(refs, hyps)
    expected = [kaldialign.edit_distance(r, h)["total"] for r, h in zip(refs, hyps, strict=True)]
    assert got[:, 1:].sum(axis=1).tolist() == expected


def test_alignments_spell_out_both_sides_with_the_same_counts():
    refs, hyps = random_pairs(1500, seed=2, vocab=6, max_len=20)
    counts = edit_counts_batch(refs, hyps).tolist()
    for ref, hyp, alignment, row in zip(refs, hyps, align_batch(refs, hyps), counts, strict=True):
        assert [r for _, r, _ in alignment.ops if r is not None] == ref
        assert [h for _, _, h in alignment.ops if h is not None] == hyp
        assert all((op == "C") == (r == h) for op, r, h in alignment.ops)
        assert alignment.counts == Counts(*row)


def test_sclite_costs_never_give_fewer_errors_and_agree_when_equally_many():
    refs, hyps = random_pairs(1500, seed=3, vocab=4, max_len=12)
    for ref, hyp, row in zip(refs, hyps, edit_counts_batch(refs, hyps).tolist(), strict=True):
        sclite = kaldialign.edit_distance(ref, hyp, sclite_mode=True)
        _, subs, dels, ins = row
        assert sclite["total"] >= subs + dels + ins
        if sclite["total"] == subs + dels + ins:
            assert (sclite["sub"], sclite["del"], sclite["ins"]) == (subs, dels, ins)


@pytest.mark.parametrize(("ref", "hyp"), [
    ([], []),
    ([], ["A"]),
    (["A"], []),
    (["A"], ["A"]),
    (["A"], ["B"]),
    (["ÉCOLE", "NAÏVE", "日本語"], ["ECOLE", "NAÏVE", "日本"]),
    (["Ⅻ", "ß", "🙂"], ["🙂", "Ⅻ"]),
    (["A"] * 300 + ["B"], ["B"]),
    (["B"], ["A"] * 300 + ["B"]),
    (["A", "B"] * 150, ["B", "A"] * 150),
])
def test_edge_pairs_agree_with_kaldialign(ref, hyp):
    expected = kaldialign.edit_distance(ref, hyp)
    counts = edit_counts(ref, hyp)
    assert counts.errors == expected["total"] == edit_distance(ref, hyp)
    assert counts.n == len(ref)


@pytest.mark.parametrize("case", ["independent", "shifted", "noisy"])
def test_long_pairs_agree_with_kaldialign(case):
    rng = random.Random(4)
    ref = [f"W{rng.randrange(3000)}" for _ in range(2000)]
    hyp = {
        "independent": [f"W{rng.randrange(3000)}" for _ in range(1800)],
        "shifted": [f"X{k}" for k in range(300)] + ref[:1700],  # far off the diagonal
        "noisy": noisy_copy(ref, rng, ref, 0.2),
    }[case]
    counts = edit_counts(ref, hyp)
    assert counts.errors == kaldialign.edit_distance(ref, hyp)["total"]
    assert align(ref, hyp).counts == counts


def test_characters_are_tokens_of_strings():
    assert edit_counts("KITTEN", "SITTING") == Counts(6, 2, 0, 1)
    assert edit_counts("日本語", "日本") == Counts(3, 0, 1, 0)
    assert edit_distance([3, 1, 4, 1, 5], [3, 1, 5]) == 2


def test_rate_of_an_empty_reference_is_undefined():
    assert Counts(0, 0, 0, 2).rate is None
    assert Counts(4, 1, 0, 1).rate == 0.5


# --- corpus scores ----------------------------------------------------------------------------


def test_wer_and_cer_equal_jiwer_on_a_random_corpus():
    refs, hyps = random_corpus(1000, seed=5)
    score = score_corpus(refs, hyps, normalize="none")
    r, h = list(refs.values()), [hyps[u] for u in refs]
    assert score.wer == pytest.approx(jiwer.wer(r, h), abs=1e-12)
    assert score.cer == pytest.approx(jiwer.cer(r, h), abs=1e-12)
    assert score.words.n == sum(len(t.split()) for t in r)
    assert score.chars.n == sum(len(t) for t in r)  # characters include the spaces


def test_edge_utterances_in_a_corpus_agree_with_jiwer():
    refs = {"a": "", "b": "ONE", "c": "TWO WORDS", "d": "", "e": "ÉCOLE 日本語",
            "f": " ".join(f"W{k % 97}" for k in range(2000))}
    hyps = {"a": "INSERTED WORDS", "b": "ONE", "c": "", "d": "", "e": "ECOLE 日本",
            "f": " ".join(f"W{k % 89}" for k in range(1990))}
    score = score_corpus(refs, hyps, normalize="none")
    r, h = list(refs.values()), list(hyps.values())
    assert score.wer == pytest.approx(jiwer.wer(r, h), abs=1e-12)
    assert score.cer == pytest.approx(jiwer.cer(r, h), abs=1e-12)
    a = next(score.utterances())
    assert (a.words, a.words.rate) == (Counts(0, 0, 0, 2), None)


def test_a_corpus_without_reference_words_has_no_wer():
    score = score_corpus({"a": "", "b": ""}, {"a": "UH", "b": ""}, normalize="none")
    assert (score.wer, score.cer, score.wer_ci95) == (None, None, None)
    assert score.words == Counts(0, 0, 0, 1)
    summary = score.summary()
    assert (summary["wer"], summary["insertions"], summary["empty_references"]) == (None, 1, 2)


def test_missing_hypotheses_are_all_deletions_and_listed():
    refs = {"1-1-1": "A B C", "1-1-2": "D E", "1-1-3": "F"}
    score = score_corpus(refs, {"1-1-1": "A B C"})
    assert score.missing_ids == ["1-1-2", "1-1-3"]
    assert score.words == Counts(6, 0, 3, 0)
    assert [u.missing for u in score.utterances()] == [False, True, True]
    assert score.summary()["missing_hypotheses"] == {"count": 2, "ids": ["1-1-2", "1-1-3"]}


def test_extra_hypotheses_are_listed_and_ignored():
    score = score_corpus({"u1": "A B"}, {"u1": "A B", "zz": "X Y Z", "u0": "Q"})
    assert score.extra_ids == ["zz", "u0"]
    assert (score.words, score.utt_ids) == (Counts(2), ["u1"])


@pytest.mark.parametrize(("normalize", "ref", "hyp", "wer"), [
    ("librispeech", "DON'T STOP NOW", "DON'T STOP NOW", 0.0),
    ("none", "Don't stop — now!", "don't STOP now", 1.0),
])
def test_normalization_is_applied_to_both_sides(normalize, ref, hyp, wer):
    score = score_corpus({"u": "Don't stop — now!"}, {"u": "don't   STOP now"}, normalize=normalize)
    assert (score.refs, score.hyps, score.wer) == ([ref], [hyp], wer)


def test_unknown_normalization_is_rejected():
    with pytest.raises(ValueError, match="allowed: librispeech, none"):
        score_corpus({"u": "A"}, {"u": "A"}, normalize="lower")


def test_speakers_default_to_the_librispeech_id_prefix():
    refs = {"1089-134686-0000": "A B", "1089-134686-0001": "C", "84-121123-0000": "D E F F"}
    hyps = {"1089-134686-0000": "A", "1089-134686-0001": "C", "84-121123-0000": "D E F F"}
    speakers = score_corpus(refs, hyps).per_speaker()
    assert [(s.speaker, s.n_utterances, s.words) for s in speakers] == [
        ("84", 1, Counts(4)), ("1089", 2, Counts(3, 0, 1, 0))]


def test_speakers_can_come_from_a_mapping():
    score = score_corpus({"x": "A", "y": "B"}, {"x": "A", "y": "C"}, speakers={"x": "bob", "y": "ann"})
    assert [(s.speaker, s.words.errors) for s in score.per_speaker()] == [("ann", 1), ("bob", 0)]
    with pytest.raises(ValueError, match=r"no entry for 1 utterance.*'y'"):
        score_corpus({"x": "A", "y": "B"}, {}, speakers={"x": "bob"})


def test_summary_has_the_documented_keys():
    summary = score_corpus(*random_corpus(20, seed=6)).summary()
    for key in ("wer", "cer", "wer_ci95", "n_utterances", "n_words", "n_chars", "substitutions",
                "deletions", "insertions", "missing_hypotheses", "extra_hypotheses", "speakers"):
        assert key in summary
    assert 0 < summary["wer"] < 1


# --- bootstrap --------------------------------------------------------------------------------


def test_bootstrap_interval_contains_the_estimate_and_is_seeded():
    score = score_corpus(*random_corpus(400, seed=7), seed=3)
    lo, hi = score.wer_ci95
    assert lo < score.wer < hi
    assert hi - lo < 0.05
    again = score_corpus(*random_corpus(400, seed=7), seed=3)
    other_seed = score_corpus(*random_corpus(400, seed=7), seed=4)
    assert again.wer_ci95 == score.wer_ci95
    assert other_seed.wer_ci95 != score.wer_ci95


def test_bootstrap_of_an_error_free_corpus_is_a_point():
    assert bootstrap_ci(np.zeros(5, np.int64), np.full(5, 10), n_boot=50) == (0.0, 0.0)


def test_paired_bootstrap_of_identical_systems_finds_no_difference():
    refs, hyps = random_corpus(300, seed=8)
    a, b = score_corpus(refs, hyps), score_corpus(refs, dict(hyps))
    test = paired_bootstrap(a, b, n_boot=2000, seed=0)
    assert test["delta"] == 0.0
    assert test["delta_ci95"] == [0.0, 0.0]
    assert test["p_value"] == 1.0
    assert test["prob_a_better"] == 0.5


def test_paired_bootstrap_detects_a_clearly_better_system():
    refs, good = random_corpus(300, seed=9, rate=0.05)
    _, bad = random_corpus(300, seed=9, rate=0.15)
    a, b = score_corpus(refs, good), score_corpus(refs, bad)
    test = paired_bootstrap(a, b, n_boot=2000, seed=0)
    assert test["delta"] < 0
    assert test["delta_ci95"][1] < 0
    assert test["p_value"] < 0.01
    assert test["prob_a_better"] > 0.99
    assert paired_bootstrap(a, b, n_boot=2000, seed=0) == test


def test_paired_bootstrap_needs_the_same_references():
    a = score_corpus({"u": "A B"}, {"u": "A"})
    b = score_corpus({"u": "A C"}, {"u": "A"})
    with pytest.raises(ValueError, match="same references"):
        paired_bootstrap(a, b)
