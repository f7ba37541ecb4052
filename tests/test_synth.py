"""The synthetic corpus (`asr synth`): LibriSpeech's layout and formats, determinism, the split
design of the semi-supervised setup, and the sentence rules that keep transcripts true."""

from __future__ import annotations

import json
import re
import shutil
from collections import defaultdict
from pathlib import Path

import pytest
import soundfile as sf

from asr.cli import main
from asr.data.synth import (
    CLEAN_ACCENTS,
    HELD_OUT_ACCENTS,
    MARKER,
    MAX_SECONDS,
    MIN_SECONDS,
    PRESETS,
    SPLITS,
    UNLABELED_SPLIT,
    synthesize_corpus,
)
from asr.data.synth_text import (
    known_words,
    load_sentences,
    read_fortune_paragraphs,
    segment_passage,
    split_pools,
)
from asr.text.normalize import normalize_librispeech

_MISSING = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
pytestmark = pytest.mark.skipif(
    bool(_MISSING), reason=f"{', '.join(_MISSING)} not installed (apt-get install espeak-ng sox)")

LIBRISPEECH_MINI = Path(__file__).resolve().parents[2] / "shared" / "librispeech-mini" / "LibriSpeech"
SCALE = 0.5  # tiny x 0.5: about 80 s of audio a corpus
SEED = 7
FLAC_NAME = re.compile(r"^(\d+)-(\d+)-(\d{4})\.flac$")
TRANSCRIPT = re.compile(r"^[A-Z']+( [A-Z']+)*$")


def _synth(root: Path, seed: int = SEED, jobs: int = 2) -> Path:
    synthesize_corpus(root, size="tiny", hours_scale=SCALE, seed=seed, jobs=jobs)
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return _synth(tmp_path_factory.mktemp("synth") / "corpus")


def _flacs(librispeech: Path) -> list[Path]:
    return sorted(librispeech.glob("*/*/*/*.flac"))


def _kaldi(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    assert lines == sorted(lines), f"{path} is not sorted"
    return dict(line.split(" ", 1) for line in lines)


def _manifest(root: Path) -> dict:
    return json.loads((root / "synth.json").read_text())


# --- LibriSpeech's layout and formats, checked on the real thing too ---------------------------


@pytest.mark.parametrize("which", ["synthetic", "librispeech-mini"])
def test_tree_names_and_transcripts_follow_librispeech(which, corpus):
    if which == "librispeech-mini" and not LIBRISPEECH_MINI.is_dir():
        pytest.skip(f"{LIBRISPEECH_MINI} is absent: nothing real to compare with")
    librispeech = corpus / "LibriSpeech" if which == "synthetic" else LIBRISPEECH_MINI
    flacs = _flacs(librispeech)
    assert flacs
    for flac in flacs:
        speaker, chapter = flac.parent.parent.name, flac.parent.name
        m = FLAC_NAME.match(flac.name)
        assert m and m.group(1) == speaker and m.group(2) == chapter, flac
        if flac.parts[-4] == UNLABELED_SPLIT:
            continue
        transcripts = _kaldi(flac.parent / f"{speaker}-{chapter}.trans.txt")
        assert sorted(transcripts) == sorted(f.stem for f in flac.parent.glob("*.flac"))
        assert all(TRANSCRIPT.match(text) for text in transcripts.values())


def test_audio_is_16khz_mono_16bit_flac_like_librispeech(corpus):
    expected = {("FLAC", 16000, 1, "PCM_16")}
    if LIBRISPEECH_MINI.is_dir():  # the convention is the real corpus's, not ours
        real = {(i.format, i.samplerate, i.channels, i.subtype)
                for i in map(sf.info, _flacs(LIBRISPEECH_MINI)[:5])}
        assert real == expected
    ours = {(i.format, i.samplerate, i.channels, i.subtype)
            for i in map(sf.info, _flacs(corpus / "LibriSpeech"))}
    assert ours == expected


def test_every_split_is_written(corpus):
    assert sorted(p.name for p in (corpus / "LibriSpeech").iterdir() if p.is_dir()) == sorted(SPLITS)


# --- determinism ----------------------------------------------------------------------------------


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_whatever_the_job_count(corpus, tmp_path, capsys):
    again = _files(_synth(tmp_path / "again", jobs=1))
    first = _files(corpus)
    assert sorted(again) == sorted(first)
    different = [name for name in first if first[name] != again[name]]
    assert different == []
    # no temporary file is left behind, and the last progress line counts hours and speed
    assert not [name for name in again if ".tmp-" in name]
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.fullmatch(r"synth: (\d+)/\1 utterances \(100%\), [\d.]+ h audio, \d+x real time, "
                        r"elapsed \d+ s, ETA 0 s", last), last


def test_another_seed_gives_another_corpus(corpus, tmp_path):
    other = _files(_synth(tmp_path / "other", seed=SEED + 1))
    first = _files(corpus)
    shared_audio = [n for n in set(first) & set(other) if n.endswith(".flac") and first[n] == other[n]]
    assert shared_audio == []
    assert first["held-out/train-unlabeled.txt"] != other["held-out/train-unlabeled.txt"]


# --- durations ------------------------------------------------------------------------------------


def test_utterance_and_split_durations_are_in_range(corpus):
    seconds = defaultdict(float)
    for flac in _flacs(corpus / "LibriSpeech"):
        duration = sf.info(flac).duration
        assert 0.75 * MIN_SECONDS <= duration <= 1.3 * MAX_SECONDS, (flac.name, duration)
        seconds[flac.parts[-4]] += duration
    manifest = _manifest(corpus)
    for split, parts in PRESETS["tiny"].items():
        target = sum(p.minutes for p in parts) * 60 * SCALE
        # Planned to the nearest utterance, with a length model good to about 6%.
        assert abs(seconds[split] - target) <= 0.15 * target + MAX_SECONDS / 2, split
        assert manifest["splits"][split]["hours"] == pytest.approx(seconds[split] / 3600, abs=1e-4)


# --- speakers and the semi-supervised split design ------------------------------------------------


def _speakers_txt(librispeech: Path) -> dict[int, tuple[str, str, float, str]]:
    rows = {}
    for line in (librispeech / "SPEAKERS.TXT").read_text().splitlines():
        if not line.startswith(";"):
            speaker, sex, subset, minutes, name = (field.strip() for field in line.split("|"))
            rows[int(speaker)] = (sex, subset, float(minutes), name)
    return rows


def test_speakers_are_disjoint_across_splits_and_listed_in_speakers_txt(corpus):
    librispeech = corpus / "LibriSpeech"
    by_split = {split: {int(p.name) for p in (librispeech / split).iterdir()} for split in SPLITS}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            assert not by_split[a] & by_split[b], (a, b)
    listed = _speakers_txt(librispeech)
    assert set(listed) == set().union(*by_split.values())
    voices = defaultdict(set)
    for speaker, (sex, subset, minutes, name) in listed.items():
        assert speaker in by_split[subset] and sex in "MF" and minutes > 0
        voices["train" if subset.startswith("train") else "eval"].add(name)
    assert not voices["train"] & voices["eval"], "a dev/test voice also speaks in training"


def test_other_condition_brings_accents_held_out_of_train_clean(corpus):
    speakers = _manifest(corpus)["speakers"]
    accents = defaultdict(set)
    conditions = defaultdict(set)
    for s in speakers:
        accents[s["split"]].add(s["accent"])
        conditions[s["split"]].add(s["condition"])
    assert accents["train-clean"] <= set(CLEAN_ACCENTS)
    assert accents["dev-clean"] | accents["test-clean"] <= set(CLEAN_ACCENTS)
    assert set(HELD_OUT_ACCENTS) & (accents["dev-other"] | accents["test-other"])
    assert conditions[UNLABELED_SPLIT] == {"clean", "other"}  # like train-clean-360 + train-other-500


def test_unlabeled_split_has_no_transcripts_and_held_out_text_covers_its_audio(corpus):
    unlabeled = corpus / "LibriSpeech" / UNLABELED_SPLIT
    assert list(unlabeled.rglob("*.trans.txt")) == []
    held_out = _kaldi(corpus / "held-out" / f"{UNLABELED_SPLIT}.txt")
    assert sorted(held_out) == sorted(f.stem for f in _flacs(corpus / "LibriSpeech") if f.parts[-4] == UNLABELED_SPLIT)
    assert all(TRANSCRIPT.match(text) for text in held_out.values())


def test_dev_and_test_sentences_never_occur_in_training(corpus):
    texts = defaultdict(set)
    for trans in (corpus / "LibriSpeech").rglob("*.trans.txt"):
        texts[trans.parts[-4].split("-")[0]].update(_kaldi(trans).values())
    texts["train"].update(_kaldi(corpus / "held-out" / f"{UNLABELED_SPLIT}.txt").values())
    assert texts["train"] and texts["dev"] and texts["test"]
    assert not texts["train"] & (texts["dev"] | texts["test"])


# --- re-runs, refusals, missing tools ----------------------------------------------------------------


@pytest.mark.parametrize("flags", [[], ["--overwrite"]])
def test_rerun_with_same_arguments_is_a_noop_that_says_so(flags, corpus, capsys):
    before = {p: p.stat().st_mtime_ns for p in corpus.rglob("*")}
    code = main(["synth", "--out", str(corpus), "--size", "tiny", "--hours-scale", str(SCALE),
                 "--seed", str(SEED), *flags])
    assert code == 0 and "nothing to do" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in corpus.rglob("*")} == before


@pytest.mark.parametrize("setup, overwrite, message", [
    ("finished, other seed", False, "made with .* pass --overwrite"),
    ("unfinished", False, "already holds LibriSpeech.* pass --overwrite"),
    ("foreign LibriSpeech", True, "not made by 'asr synth'.* not removing it"),
])
def test_existing_corpus_is_never_silently_replaced(setup, overwrite, message, corpus, tmp_path):
    root, seed = tmp_path, SEED
    if setup == "finished, other seed":
        root, seed = corpus, SEED + 1
    else:
        (root / "LibriSpeech" / "dev-clean").mkdir(parents=True)
        if setup == "unfinished":
            (root / "synth.json").write_text("{}")
    with pytest.raises(ValueError, match=message):
        synthesize_corpus(root, size="tiny", hours_scale=SCALE, seed=seed, overwrite=overwrite)
    assert (root / "LibriSpeech").is_dir()
    assert (root / MARKER).is_file() == (setup == "finished, other seed")


def test_overwrite_replaces_an_unfinished_corpus(tmp_path):
    stale = tmp_path / "LibriSpeech" / "dev-clean" / "1" / "2" / "1-2-0000.flac"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by an interrupted run")
    (tmp_path / "synth.json").write_text("{}")
    synthesize_corpus(tmp_path, size="tiny", hours_scale=0.2, seed=SEED, overwrite=True)
    assert not stale.exists()
    assert json.loads((tmp_path / MARKER).read_text()) == {"size": "tiny", "hours_scale": 0.2, "seed": SEED}


@pytest.mark.parametrize("tools_on_path, package", [
    ((), "espeak-ng"),
    (("espeak-ng",), "sox"),
    (("espeak-ng", "sox"), "bible-kjv"),
])
def test_missing_tool_names_the_debian_package(tools_on_path, package, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in tools_on_path:
        (bin_dir / tool).symlink_to(shutil.which(tool))
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(FileNotFoundError, match=f"apt-get install {package}"):
        synthesize_corpus(tmp_path / "corpus", size="tiny", seed=0)
    assert not (tmp_path / "corpus" / "LibriSpeech").exists()


def test_missing_fortunes_names_the_debian_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="fortunes-min"):
        read_fortune_paragraphs(tmp_path)


@pytest.mark.parametrize("argv, message", [
    (["--size", "huge"], "unknown --size 'huge'; allowed: tiny, demo, gpu"),
    (["--hours-scale", "0"], "--hours-scale must be a positive number"),
    (["--jobs", "-1"], "--jobs must be >= 0"),
])
def test_cli_rejects_bad_arguments_by_name(argv, message, tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


# --- sentences: the synthesizer must say exactly what the transcript says ------------------------

VOCABULARY = known_words(["The Lord is good."])  # "LORD" is a word, "NASA" is not

SENTENCES = [
    # passage -> (spoken by espeak-ng, transcript), or None when it must be dropped
    ("And God said, Let there be light: and there was light.",
     ("And God said, Let there be light: and there was light.",
      "AND GOD SAID LET THERE BE LIGHT AND THERE WAS LIGHT")),
    ("The LORD is my shepherd; I shall not want.",  # capitals: real word, said in normal case
     ("The Lord is my shepherd; I shall not want.", "THE LORD IS MY SHEPHERD I SHALL NOT WANT")),
    ("A long-forgotten loved one will appear soon.",  # hyphens are word breaks
     ("A long forgotten loved one will appear soon.", "A LONG FORGOTTEN LOVED ONE WILL APPEAR SOON")),
    ("'Don't go,' she said -- to her brothers' friend.",  # quote marks go, contractions stay
     ("Don't go, she said, to her brothers friend.", "DON'T GO SHE SAID TO HER BROTHERS FRIEND")),
    ("The LORD (blessed be he) is good unto all of us.",  # brackets are pauses
     ("The Lord blessed be he is good unto all of us.", "THE LORD BLESSED BE HE IS GOOD UNTO ALL OF US")),
    ("He gave them 30 pieces of silver in the temple.", None),  # digits are said differently
    ("Mr. Smith went down to the market in the town.", None),  # abbreviation
    ("J. R. R. Tolkien wrote a long book about rings.", None),  # initials
    ("The NASA engineers launched a rocket into the sky.", None),  # acronym
    ("Hmm, the answer is not quite what we expected.", None),  # spelled out by espeak-ng
    ("A Tale of Two Cities LITE(tm) by a famous author.", None),  # "tm" too
    ("You & I will walk together down to the sea.", None),  # symbol read aloud
    ("Jesus wept.", None),  # shorter than MIN_WORDS
]


@pytest.mark.parametrize("passage, expected", SENTENCES)
def test_sentence_rules(passage, expected):
    got = [(s.spoken, s.transcript) for s in segment_passage(passage, VOCABULARY, "test")]
    assert got == ([expected] if expected else [])
    for spoken, transcript in got:
        assert transcript == normalize_librispeech(spoken)


def test_sentence_pool_is_large_and_dev_test_text_is_disjoint_from_training():
    sentences = load_sentences()
    vocabulary = {w for s in sentences for w in s.transcript.split()}
    assert len(sentences) > 20000 and len(vocabulary) > 5000
    train, evaluation = split_pools(sentences, 0.08)
    assert 0.05 < len(evaluation) / len(sentences) < 0.11
    assert not {s.transcript for s in train} & {s.transcript for s in evaluation}
    assert all(TRANSCRIPT.match(s.transcript) for s in sentences)
    assert {s.source for s in sentences} == {"kjv", "fortunes"}
