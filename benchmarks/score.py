"""Scoring speed: WER+CER of many utterance pairs, against jiwer on the same strings.

Makes LibriSpeech-like pairs (sentences of about 20 words drawn with Zipf frequencies from a
few-thousand-word vocabulary; hypotheses with about 10% word errors, split evenly between
substitutions, deletions and insertions), checks that WER and CER equal jiwer's, and prints
one markdown table of wall-clock seconds (best of ``--repeat``).

    python -m benchmarks.score                     # 100k pairs
    python -m benchmarks.score --pairs 10000 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version

import numpy as np

from asr.edit_distance import edit_counts_batch
from asr.score_report import write_reports
from asr.wer import score_corpus

LETTERS = np.array(list("ETAONIHSRDLUWMCFGYPBVK'XJQZ"))


def make_pairs(n_pairs: int, *, vocab_size: int, mean_words: float, error_rate: float,
               seed: int) -> tuple[list[str], list[str]]:
    """Reference and hypothesis sentences (already normalized: upper case, single spaces)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 10, size=vocab_size)
    vocab = ["".join(rng.choice(LETTERS[:26], size=k)) for k in lengths]
    zipf = 1.0 / np.arange(1, vocab_size + 1)
    n_words = np.maximum(1, rng.poisson(mean_words, size=n_pairs))
    words = rng.choice(vocab_size, size=int(n_words.sum()), p=zipf / zipf.sum())
    edit = rng.random(len(words))
    other = rng.choice(vocab_size, size=len(words), p=zipf / zipf.sum())
    refs, hyps, start = [], [], 0
    for n in n_words.tolist():
        ref, hyp = [], []
        for k in range(start, start + n):
            word, u = vocab[words[k]], edit[k]
            ref.append(word)
            if u < error_rate / 3:  # substitution
                hyp.append(vocab[other[k]])
            elif u < 2 * error_rate / 3:  # deletion
                continue
            elif u < error_rate:  # insertion after the word
                hyp += [word, vocab[other[k]]]
            else:
                hyp.append(word)
        refs.append(" ".join(ref))
        hyps.append(" ".join(hyp))
        start += n
    return refs, hyps


def best_of(repeat: int, fn: Callable[[], object]) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--vocab", type=int, default=3000)
    parser.add_argument("--words", type=float, default=20.0, help="mean words a reference")
    parser.add_argument("--error-rate", type=float, default=0.10)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    refs, hyps = make_pairs(args.pairs, vocab_size=args.vocab, mean_words=args.words,
                            error_rate=args.error_rate, seed=args.seed)
    ids = [f"{k % 40}-{k // 40}-{k:06d}" for k in range(args.pairs)]  # 40 speakers
    ref_map, hyp_map = dict(zip(ids, refs, strict=True)), dict(zip(ids, hyps, strict=True))
    rows = []

    def ours() -> tuple[np.ndarray, np.ndarray]:
        words = edit_counts_batch([r.split() for r in refs], [h.split() for h in hyps])
        return words, edit_counts_batch(refs, hyps)

    seconds, (words, chars) = best_of(args.repeat, ours)
    wer, cer = words[:, 1:].sum() / words[:, 0].sum(), chars[:, 1:].sum() / chars[:, 0].sum()
    rows.append(("asr.edit_distance: WER + CER counts (`edit_counts_batch`, words and characters)", seconds))

    import jiwer

    jiwer_seconds, (jiwer_wer, jiwer_cer) = best_of(
        args.repeat, lambda: (jiwer.wer(refs, hyps), jiwer.cer(refs, hyps)))
    if abs(wer - jiwer_wer) > 1e-12 or abs(cer - jiwer_cer) > 1e-12:
        raise SystemExit(f"mismatch: WER {wer} vs jiwer {jiwer_wer}, CER {cer} vs jiwer {jiwer_cer}")
    rows.append((f"jiwer {version('jiwer')}: `wer` + `cer`", jiwer_seconds))

    seconds, score = best_of(args.repeat, lambda: score_corpus(ref_map, hyp_map, normalize="none"))
    rows.append(("asr.wer: `score_corpus` (counts, speakers, 1000-resample CI), normalize=none",
                 seconds))
    seconds, _ = best_of(args.repeat, lambda: score_corpus(ref_map, hyp_map))
    rows.append(("asr.wer: `score_corpus`, normalize=librispeech", seconds))
    with tempfile.TemporaryDirectory() as out:
        seconds, _ = best_of(args.repeat, lambda: write_reports(score, out, name="bench"))
    rows.append(("asr.score_report: `write_reports` (alignments.txt and the other report files)", seconds))

    print(f"{args.pairs} pairs, {words[:, 0].sum()} reference words, {chars[:, 0].sum()} "
          f"characters; WER {100 * wer:.2f}% CER {100 * cer:.2f}% (equal to jiwer's)")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, numpy {np.__version__}; best of {args.repeat}\n")
    print("| step | seconds | pairs / s |\n| --- | ---: | ---: |")
    for name, secs in rows:
        print(f"| {name} | {secs:.2f} | {args.pairs / secs:,.0f} |")


if __name__ == "__main__":
    main()
