"""Transcript files and `asr score`: parsing, errors naming file and line, JSON, reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from asr.cli import main
from asr.report import (
    RESULTS_HEADER,
    SPEAKERS_HEADER,
    alignment_rows,
    format_rate,
    read_transcripts,
)
from asr.wer import Counts, score_corpus

LIBRISPEECH_MINI = Path(__file__).resolve().parents[2] / "shared" / "librispeech-mini" / "LibriSpeech"


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# --- reading transcripts ----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("text", "u1 HELLO WORLD\nu2\tTABS  AND   SPACES \nu3\n",
     {"u1": "HELLO WORLD", "u2": "TABS  AND   SPACES", "u3": ""}),
    ("text", "1089-134686-0000 HE'S (NOT) HERE\r\n",
     {"1089-134686-0000": "HE'S (NOT) HERE"}),
    ("hyp.trn", "HELLO WORLD (u1)\n(u2)\nA (NOISE) B (spk-u3)\n  SPACED  (u4)  \n",
     {"u1": "HELLO WORLD", "u2": "", "spk-u3": "A (NOISE) B", "u4": "SPACED"}),
    ("empty.txt", "", {}),
])
def test_read_transcripts(tmp_path, name, content, expected):
    assert read_transcripts(write(tmp_path / name, content)) == expected


def test_format_can_be_forced(tmp_path):
    path = write(tmp_path / "hyp.txt", "HELLO (u1)\n")
    assert read_transcripts(path, "trn") == {"u1": "HELLO"}
    assert read_transcripts(path, "kaldi") == {"HELLO": "(u1)"}


@pytest.mark.parametrize(("name", "content", "message"), [
    ("text", "u1 A\nu2 B\nu1 C\n", r"text:3: duplicate utterance id 'u1' \(first on line 1\)"),
    ("h.trn", "A (u1)\nB (u1)\n", r"h.trn:2: duplicate utterance id 'u1'"),
    ("h.trn", "A (u1)\nNO ID HERE\n", r"h.trn:2: expected 'WORDS \(utt-id\)'"),
    ("h.trn", "A ()\n", r"h.trn:1: expected 'WORDS \(utt-id\)'"),
    ("text", "u1 A\n\nu2 B\n", r"text:2: expected '<utt-id> WORDS'"),
    ("text", "u1 A\n  u2 B\n", r"text:2: expected '<utt-id> WORDS'"),
    ("text", b"u1 A\nu2 \xff\n", r"text:2: not valid UTF-8"),
])
def test_bad_transcripts_name_file_and_line(tmp_path, name, content, message):
    with pytest.raises(ValueError, match=message):
        read_transcripts(write(tmp_path / name, content))


def test_unknown_format_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="allowed: auto, kaldi, trn"):
        read_transcripts(write(tmp_path / "t", "u A\n"), "ctm")


# --- report formatting ------------------------------------------------------------------------


def test_alignment_rows_pad_each_column_to_its_wider_word():
    rows = alignment_rows([("C", "HE", "HE"), ("S", "HOPED", "HOP"), ("D", "THERE", None),
                           ("I", None, "A"), ("C", "日本", "日本")])
    assert rows == ("REF:  HE HOPED THERE * 日本",
                    "HYP:  HE HOP   ***** A 日本",
                    "EVAL:    S     D     I")


# --- asr score --------------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path):
    ref = write(tmp_path / "ref.txt", "1089-1-0 He hoped there would be stew.\n"
                                      "1089-1-1 FOR DINNER\n84-2-0 TURNIPS AND CARROTS\n")
    hyp = write(tmp_path / "hyp.txt", "1089-1-0 HE HOPED THERE WOULD BE STU\n"
                                      "84-2-0 TURNIPS AND CARROTS AND\n9-9-9 EXTRA\n")
    better = write(tmp_path / "better.txt", "1089-1-0 HE HOPED THERE WOULD BE STEW\n"
                                            "1089-1-1 FOR DINNER\n84-2-0 TURNIPS AND CARROTS\n")
    return ref, hyp, better


def run_json(capsys, *argv: str) -> dict:
    assert main(["score", *argv, "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # one JSON object on one line
    return json.loads(out)


def test_json_summary(files, capsys):
    ref, hyp, _ = files
    summary = run_json(capsys, "--ref", str(ref), "--hyp", str(hyp))
    assert {k: summary[k] for k in ("n_utterances", "n_words", "substitutions", "deletions",
                                    "insertions")} == {"n_utterances": 3, "n_words": 11,
                                                       "substitutions": 1, "deletions": 2,
                                                       "insertions": 1}
    assert summary["wer"] == pytest.approx(4 / 11)
    assert 0 < summary["cer"] < summary["wer"]
    assert summary["missing_hypotheses"] == {"count": 1, "ids": ["1089-1-1"]}
    assert summary["extra_hypotheses"] == {"count": 1, "ids": ["9-9-9"]}
    assert "compare" not in summary


def test_missing_and_extra_ids_are_reported_on_stderr(files, capsys):
    ref, hyp, _ = files
    assert main(["score", "--ref", str(ref), "--hyp", str(hyp)]) == 0
    captured = capsys.readouterr()
    assert "WER 36.36%" in captured.out
    assert "1 reference id(s) without a hypothesis, scored as all deletions: 1089-1-1" in captured.err
    assert "1 hypothesis id(s) not in" in captured.err and "9-9-9" in captured.err


def test_compare_adds_the_paired_test(files, capsys):
    ref, hyp, better = files
    summary = run_json(capsys, "--ref", str(ref), "--hyp", str(better), "--compare", str(hyp))
    test = summary["compare"]["paired_bootstrap"]
    assert summary["wer"] == 0.0
    assert summary["compare"]["wer"] == pytest.approx(4 / 11)
    assert test["delta"] == pytest.approx(-4 / 11)
    assert set(test) >= {"delta_ci95", "p_value", "prob_a_better", "n_boot", "seed"}


def test_trn_and_kaldi_inputs_score_the_same(files, tmp_path, capsys):
    ref, hyp, _ = files
    ref_trn, hyp_trn = (
        write(tmp_path / f"{kaldi.stem}.trn",
              "".join(f"{t} ({u})\n" for u, t in read_transcripts(kaldi).items()))
        for kaldi in (ref, hyp))
    from_kaldi = run_json(capsys, "--ref", str(ref), "--hyp", str(hyp))
    from_trn = run_json(capsys, "--ref", str(ref_trn), "--hyp", str(hyp_trn))
    assert from_trn == {**from_kaldi, "name": str(hyp_trn)}


def test_out_writes_the_reports(files, tmp_path, capsys):
    ref, hyp, _ = files
    out = tmp_path / "report"
    summary = run_json(capsys, "--ref", str(ref), "--hyp", str(hyp), "--out", str(out),
                       "--name", "sys1")
    assert sorted(p.name for p in out.iterdir()) == [
        "alignments.txt", "hyp.trn", "hyp.txt", "ref.trn", "results_row.md", "speakers.tsv",
        "summary.json"]
    assert json.loads((out / "summary.json").read_text()) == summary
    # the written texts are the normalized ones and rescore to the same numbers
    assert read_transcripts(out / "ref.trn")["1089-1-0"] == "HE HOPED THERE WOULD BE STEW"
    assert read_transcripts(out / "hyp.txt") == read_transcripts(out / "hyp.trn")
    assert read_transcripts(out / "hyp.txt")["1089-1-1"] == ""
    rescored = run_json(capsys, "--ref", str(out / "ref.trn"), "--hyp", str(out / "hyp.txt"))
    assert (rescored["wer"], rescored["cer"]) == (summary["wer"], summary["cer"])

    blocks = (out / "alignments.txt").read_text().split("\n\n")[1:]
    assert [b.splitlines()[0] for b in blocks] == [
        "id: 1089-1-0  speaker: 1089", "id: 1089-1-1  speaker: 1089  (no hypothesis: scored as empty)",
        "id: 84-2-0  speaker: 84"]
    assert blocks[0].splitlines()[1:] == [
        "REF:  HE HOPED THERE WOULD BE STEW",
        "HYP:  HE HOPED THERE WOULD BE STU",
        "EVAL:                         S",
        "Scores: (#C #S #D #I) 5 1 0 0  N=6  WER=16.67%"]
    assert blocks[1].splitlines()[2] == "HYP:  *** ******"

    speakers = (out / "speakers.tsv").read_text().splitlines()
    assert speakers[0].split("\t") == list(SPEAKERS_HEADER)
    assert [line.split("\t")[:7] for line in speakers[1:]] == [
        ["84", "1", "3", "0", "0", "1", "33.33"], ["1089", "2", "8", "1", "2", "0", "37.50"]]

    row = (out / "results_row.md").read_text()
    lo, hi = (format_rate(x) for x in summary["wer_ci95"])
    assert row == f"| sys1 | 36.36 | {format_rate(summary['cer'])} | 11 | 1 | 2 | 1 | {lo}–{hi} |\n"
    assert row.count("|") == RESULTS_HEADER.splitlines()[0].count("|")


@pytest.mark.parametrize(("hyp_text", "message"), [
    ("1089-1-0 A\n1089-1-0 B\n", "hyp.txt:2: duplicate utterance id '1089-1-0'"),
    ("\n", "hyp.txt:1: expected '<utt-id> WORDS'"),
])
def test_errors_exit_non_zero_naming_file_and_line(files, tmp_path, capsys, hyp_text, message):
    ref, _, _ = files
    bad = write(tmp_path / "hyp.txt", hyp_text)
    assert main(["score", "--ref", str(ref), "--hyp", str(bad)]) != 0
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == ""


def test_missing_file_exits_non_zero(files, tmp_path, capsys):
    ref, _, _ = files
    assert main(["score", "--ref", str(ref), "--hyp", str(tmp_path / "nope.txt")]) != 0
    assert "nope.txt" in capsys.readouterr().err


# --- real LibriSpeech transcripts -------------------------------------------------------------


def librispeech_transcripts(root: Path) -> dict[str, str]:
    texts = {}
    for path in sorted(root.glob("*/*/*/*.trans.txt")):
        texts.update(read_transcripts(path, "kaldi"))
    return texts


@pytest.mark.skipif(not LIBRISPEECH_MINI.is_dir(),
                    reason="../shared/librispeech-mini (real LibriSpeech transcripts) is not present")
def test_real_librispeech_transcripts(tmp_path, capsys):
    refs = librispeech_transcripts(LIBRISPEECH_MINI)
    assert len(refs) == 115
    # every hypothesis drops its utterance's last word
    hyps = {u: t.rsplit(" ", 1)[0] if " " in t else "" for u, t in refs.items()}
    score = score_corpus(refs, hyps)
    assert score.words == Counts(sum(len(t.split()) for t in refs.values()), 0, len(refs), 0)
    assert score.refs == list(refs.values())  # LibriSpeech text is already normalized
    assert {s.speaker for s in score.per_speaker()} == {u.split("-")[0] for u in refs}

    ref_file = write(tmp_path / "text", "".join(f"{u} {t}\n" for u, t in refs.items()))
    hyp_file = write(tmp_path / "hyp.txt", "".join(f"{u} {t}\n" for u, t in hyps.items()))
    summary = run_json(capsys, "--ref", str(ref_file), "--hyp", str(hyp_file))
    assert summary["wer"] == pytest.approx(score.wer)
    assert summary["deletions"] == 115
