"""Transcript and report file formats: how scoring inputs and outputs look on disk.

Transcripts are read as Kaldi text (``<utt-id> WORDS...``) or sclite trn
(``WORDS (utt-id)``); an id alone (Kaldi) or ``(utt-id)`` alone (trn) is an empty transcript.
What is computed lives in :mod:`asr.wer`; this module only parses and formats.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

FORMATS = ("kaldi", "trn")

RESULTS_HEADER = (
    "| system | WER % | CER % | words | S | D | I | WER 95% CI |\n"
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | :---: |"
)
"""Header of the docs/RESULTS.md table whose rows :func:`results_row` formats."""

SPEAKERS_HEADER = ("speaker", "utterances", "words", "substitutions", "deletions", "insertions",
                   "wer_percent", "characters", "cer_percent")
"""Columns of ``speakers.tsv``."""

_TRN_LINE = re.compile(r"(?P<text>.*?)\s*\((?P<utt>[^()\s]+)\)\s*")


# --- transcripts ------------------------------------------------------------------------------


def transcript_format(path: Path, fmt: str = "auto") -> str:
    """``kaldi`` or ``trn``: as given, or for ``auto`` by the file extension (``.trn``)."""
    if fmt == "auto":
        return "trn" if path.suffix == ".trn" else "kaldi"
    if fmt not in FORMATS:
        raise ValueError(f"unknown transcript format {fmt!r}; allowed: auto, {', '.join(FORMATS)}")
    return fmt


def read_transcripts(path: str | Path, fmt: str = "auto") -> dict[str, str]:
    """Utterance id -> transcript, in file order.

    Errors name the file and line: undecodable UTF-8, a line that is not a transcript of the
    format (a blank line included), a duplicate id.
    """
    path = Path(path)
    fmt = transcript_format(path, fmt)
    texts: dict[str, str] = {}
    first_seen: dict[str, int] = {}
    for lineno, raw in enumerate(path.read_bytes().splitlines(), start=1):
        where = f"{path}:{lineno}"
        try:  # a byte-order mark (Windows editors) is not part of the first id
            line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{where}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
        if fmt == "trn":
            match = _TRN_LINE.fullmatch(line)
            if match is None:
                raise ValueError(f"{where}: expected 'WORDS (utt-id)' (sclite trn), got {line!r}")
            utt, text = match["utt"], match["text"].strip()
        else:
            fields = line.split(maxsplit=1)
            if not fields or line[0].isspace():
                raise ValueError(f"{where}: expected '<utt-id> WORDS' (Kaldi text), got {line!r}")
            utt, text = fields[0], fields[1].strip() if len(fields) > 1 else ""
        if utt in texts:
            raise ValueError(f"{where}: duplicate utterance id {utt!r} "
                             f"(first on line {first_seen[utt]})")
        texts[utt], first_seen[utt] = text, lineno
    return texts


def write_kaldi_text(path: Path, texts: Iterable[tuple[str, str]]) -> None:
    """``<utt-id> WORDS`` lines (the id alone for an empty text)."""
    path.write_text("".join(f"{u} {t}\n" if t else f"{u}\n" for u, t in texts), encoding="utf-8")


def write_trn(path: Path, texts: Iterable[tuple[str, str]]) -> None:
    """sclite ``WORDS (utt-id)`` lines."""
    path.write_text("".join(f"{t} ({u})\n" if t else f"({u})\n" for u, t in texts), encoding="utf-8")


# --- reports ----------------------------------------------------------------------------------


def format_rate(rate: float | None, digits: int = 2) -> str:
    """A rate (fraction) as a percentage for tables; ``n/a`` when undefined (no reference)."""
    return "n/a" if rate is None or math.isnan(rate) else f"{100 * rate:.{digits}f}"


def display_width(token: str) -> int:
    """Terminal columns of a token: wide East Asian characters take two, combining marks none."""
    if token.isascii():
        return len(token)
    return sum(0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF"
               else 1 for ch in token)


def alignment_rows(ops: Sequence[tuple[str, str | None, str | None]]) -> tuple[str, str, str]:
    """sclite-like ``REF:``, ``HYP:`` and ``EVAL:`` rows of ``(op, ref, hyp)`` triples.

    One column per triple, as wide as its wider word; ``*`` fills the missing side of a
    deletion (op ``D``) or insertion (``I``); EVAL shows S, D, I and leaves C blank.
    """
    ref_row, hyp_row, eval_row = ["REF: "], ["HYP: "], ["EVAL:"]
    for op, ref, hyp in ops:
        if op == "C":  # the common case, kept cheap: both words are the same
            ref_row.append(ref)
            hyp_row.append(ref)
            eval_row.append(" " * (len(ref) if ref.isascii() else display_width(ref)))
            continue
        ref_width = 0 if ref is None else len(ref) if ref.isascii() else display_width(ref)
        hyp_width = 0 if hyp is None else len(hyp) if hyp.isascii() else display_width(hyp)
        width = max(ref_width, hyp_width, 1)
        ref_row.append("*" * width if ref is None else ref + " " * (width - ref_width))
        hyp_row.append("*" * width if hyp is None else hyp + " " * (width - hyp_width))
        eval_row.append(op + " " * (width - 1))
    return " ".join(ref_row).rstrip(), " ".join(hyp_row).rstrip(), " ".join(eval_row).rstrip()


def scores_line(correct: int, subs: int, dels: int, ins: int, n: int, rate: float | None) -> str:
    """sclite's per-utterance ``Scores:`` line, with N and the rate added."""
    return (f"Scores: (#C #S #D #I) {correct} {subs} {dels} {ins}  N={n}  "
            f"WER={format_rate(rate)}{'%' if rate is not None else ''}")


def results_row(name: str, wer: float | None, cer: float | None, n_words: int, subs: int,
                dels: int, ins: int, wer_ci95: tuple[float, float] | None) -> str:
    """One markdown row under :data:`RESULTS_HEADER` (rates in percent)."""
    ci = "n/a" if wer_ci95 is None else f"{format_rate(wer_ci95[0])}–{format_rate(wer_ci95[1])}"
    return (f"| {name} | {format_rate(wer)} | {format_rate(cer)} | {n_words} | {subs} | {dels} | "
            f"{ins} | {ci} |")


def tsv(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Tab-separated text with a header line; fields must not hold tabs or newlines."""
    return "".join("\t".join(map(str, row)) + "\n" for row in [header, *rows])
