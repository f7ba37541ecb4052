"""The report folder of one scored set (``asr score --out``, ``asr eval``) and the text summary.

What the files look like line by line (trn, Kaldi text, alignment rows, table rows) is
:mod:`asr.report`; what is counted is :mod:`asr.wer` and :mod:`asr.edit_distance`. This module
puts one :class:`asr.wer.CorpusScore` into those files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asr.edit_distance import align_batch
from asr.report import (
    SPEAKERS_HEADER,
    alignment_rows,
    format_rate,
    results_row,
    scores_line,
    tsv,
    write_kaldi_text,
    write_trn,
)

if TYPE_CHECKING:
    from asr.wer import CorpusScore


def write_reports(score: CorpusScore, out_dir: str | Path, *, name: str,
                  comparison: Mapping[str, Any] | None = None) -> None:
    """Write one scored set's report files into ``out_dir``:

    - ``hyp.txt``: normalized hypotheses, Kaldi text (a missing one as its id alone, which
      scores the same: all deletions), so that the folder can be rescored;
    - ``ref.trn``, ``hyp.trn``: normalized texts as sclite trn, for
      ``sclite -r ref.trn trn -h hyp.trn trn -i rm`` (whose alignment costs differ: see
      :mod:`asr.edit_distance`);
    - ``alignments.txt``: per utterance, ``REF:``/``HYP:``/``EVAL:`` rows and its counts;
    - ``speakers.tsv``: counts and rates (percent) per speaker;
    - ``summary.json``: the system ``name``, :meth:`CorpusScore.summary` (rates as fractions)
      and, if given, ``comparison`` (a :func:`asr.wer.paired_bootstrap` result) under
      ``compare``;
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


def text_summary(s: Mapping[str, Any], ref: Path, hyp: Path, out_dir: Path | None) -> str:
    """A few lines for people; ``s`` is the summary dict that ``asr score --json`` prints."""
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
