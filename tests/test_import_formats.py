"""`asr prepare --format kaldi|nemo|lhotse`: other toolkits' data descriptions of the real
LibriSpeech sample become the same manifests as the LibriSpeech scan, and shard."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import MINI

from asr.cli import main
from asr.data.importers import detect_format
from asr.data.manifest import prepare_corpus, read_manifest
from asr.data.shards import load_index, shard_manifests

pytestmark = pytest.mark.skipif(not (MINI / "LibriSpeech").is_dir(),
                                reason=f"needs the real-speech set ../shared/librispeech-mini, not found at {MINI}")
SPLIT = "dev-clean"  # 9 utterances, 3 speakers


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, dict]:
    """The LibriSpeech scan of dev-clean, by id: what every import must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    prepare_corpus(MINI, out, splits=[SPLIT], jobs=1)
    return {e["id"]: e for e in read_manifest(out / "manifests" / f"{SPLIT}.jsonl")}


def _utterances() -> list[tuple[str, Path, str]]:
    """(id, flac, raw transcript) of dev-clean."""
    rows = []
    for trans in sorted((MINI / "LibriSpeech" / SPLIT).rglob("*.trans.txt")):
        for line in trans.read_text().splitlines():
            utt_id, text = line.split(" ", 1)
            rows.append((utt_id, trans.parent / f"{utt_id}.flac", text))
    return rows


def make_kaldi(folder: Path, lowercase: bool = True) -> Path:
    folder.mkdir(parents=True)
    rows = _utterances()
    (folder / "wav.scp").write_text("".join(f"{u} {p}\n" for u, p, _ in rows))
    (folder / "text").write_text("".join(f"{u} {t.lower() if lowercase else t}\n" for u, _, t in rows))
    (folder / "utt2spk").write_text("".join(f"{u} {u.split('-')[0]}\n" for u, _, _ in rows))
    return folder


def make_nemo(path: Path) -> Path:
    lines = [json.dumps({"audio_filepath": str(p), "duration": sf.info(str(p)).duration, "text": t.lower()})
             for _, p, t in _utterances()]
    path.write_text("\n".join(lines) + "\n")
    return path


def prepare(*args: str) -> int:
    return main(["prepare", "--jobs", "1", *map(str, args)])


def assert_same_as_reference(manifest: Path, reference: dict[str, dict], speakers: bool = True) -> None:
    entries = read_manifest(manifest)
    assert [e["id"] for e in entries] == sorted(reference)
    for e in entries:
        ref = reference[e["id"]]
        assert (e["audio"], e["num_samples"], e["sample_rate"], e["text"]) == \
               (ref["audio"], ref["num_samples"], ref["sample_rate"], ref["text"])
        assert e["duration"] == pytest.approx(ref["duration"])
        assert e["speaker"] == (ref["speaker"] if speakers else e["id"])
        assert "chapter" not in e


@pytest.mark.parametrize(("kind", "expected"), [("kaldi", "kaldi"), ("nemo", "nemo"), ("librispeech", "librispeech")])
def test_the_format_is_detected_from_the_files(tmp_path, kind, expected):
    source = {"kaldi": lambda: make_kaldi(tmp_path / "kaldi"), "nemo": lambda: make_nemo(tmp_path / "m.json"),
              "librispeech": lambda: MINI}[kind]()
    assert detect_format(source) == expected


def test_kaldi_dir_gives_the_librispeech_manifest(tmp_path, reference):
    kaldi = make_kaldi(tmp_path / "data" / "dev")
    assert prepare("--corpus", kaldi, "--out", tmp_path / "out") == 0  # format detected
    assert_same_as_reference(tmp_path / "out" / "manifests" / "dev.jsonl", reference)
    # a folder of Kaldi dirs gives one split each; --name renames a single one
    assert prepare("--corpus", kaldi, "--format", "kaldi", "--name", "dev-kaldi", "--out", tmp_path / "out") == 0
    assert (tmp_path / "out" / "manifests" / "dev-kaldi.jsonl").is_file()
    assert prepare("--corpus", tmp_path / "data", "--out", tmp_path / "all") == 0
    assert sorted(p.name for p in (tmp_path / "all" / "manifests").glob("*.jsonl")) == ["dev.jsonl"]


def test_kaldi_segments_cut_two_utterances_out_of_one_file(tmp_path):
    _, flac, _ = _utterances()[0]
    samples, rate = sf.read(str(flac), dtype="float32")
    half = len(samples) / rate / 2
    folder = tmp_path / "seg"
    folder.mkdir()
    (folder / "wav.scp").write_text(f"rec1 {flac}\n")
    (folder / "segments").write_text(f"a rec1 0.00 {half:.2f}\nb rec1 {half:.2f} -1\n")
    (folder / "text").write_text("a FIRST HALF\nb second half\n")
    assert prepare("--corpus", folder, "--out", tmp_path / "out") == 0
    entries = read_manifest(tmp_path / "out" / "manifests" / "seg.jsonl")
    assert [(e["id"], e["text"], e["speaker"]) for e in entries] == [("a", "FIRST HALF", "a"), ("b", "SECOND HALF", "b")]
    cut = round(round(half, 2) * rate)
    for e, expected in zip(entries, (samples[:cut], samples[cut:]), strict=True):
        assert Path(e["audio"]).parent == (tmp_path / "out" / "audio" / "seg").absolute()
        written, written_rate = sf.read(e["audio"], dtype="float32")
        assert written_rate == rate and e["num_samples"] == len(expected) == len(written)
        assert np.abs(written - expected).max() <= 1 / 32768 + 1e-6  # 16-bit FLAC of the same samples
    shard_manifests(tmp_path / "out" / "manifests", tmp_path / "shards", jobs=1)
    index = load_index(tmp_path / "shards" / "seg")
    assert [index.key(i) for i in range(len(index))] == ["a", "b"]


def test_nemo_manifest_gives_the_librispeech_manifest_and_shards(tmp_path, reference):
    manifest = make_nemo(tmp_path / "dev_manifest.json")
    assert prepare("--corpus", manifest, "--out", tmp_path / "out") == 0
    assert_same_as_reference(tmp_path / "out" / "manifests" / "dev_manifest.jsonl", reference, speakers=False)
    shard_manifests(tmp_path / "out" / "manifests", tmp_path / "shards", jobs=1)
    assert len(load_index(tmp_path / "shards" / "dev_manifest")) == len(reference)


def test_lhotse_cutset_made_with_lhotse_gives_the_librispeech_manifest(tmp_path, reference):
    lhotse = pytest.importorskip("lhotse", reason="lhotse is optional: pip install -e '.[lhotse]'")
    recordings, supervisions = [], []
    for utt_id, flac, text in _utterances():
        recording = lhotse.Recording.from_file(flac, recording_id=utt_id)
        recordings.append(recording)
        supervisions.append(lhotse.SupervisionSegment(id=utt_id, recording_id=utt_id, start=0.0,
                                                      duration=recording.duration, text=text,
                                                      speaker=utt_id.split("-")[0]))
    cuts = lhotse.CutSet.from_manifests(recordings=lhotse.RecordingSet.from_recordings(recordings),
                                        supervisions=lhotse.SupervisionSet.from_segments(supervisions))
    cuts.to_file(tmp_path / "cuts_dev.jsonl.gz")
    assert prepare("--corpus", tmp_path / "cuts_dev.jsonl.gz", "--out", tmp_path / "out") == 0
    assert_same_as_reference(tmp_path / "out" / "manifests" / "cuts_dev.jsonl", reference)
    # the recipe-output layout: recordings + supervisions manifests in one folder
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    lhotse.RecordingSet.from_recordings(recordings).to_file(recipe / "mini_recordings_dev.jsonl.gz")
    lhotse.SupervisionSet.from_segments(supervisions).to_file(recipe / "mini_supervisions_dev.jsonl.gz")
    assert prepare("--corpus", recipe, "--name", "dev", "--out", tmp_path / "out2") == 0
    assert_same_as_reference(tmp_path / "out2" / "manifests" / "dev.jsonl", reference)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


BAD_INPUTS = [
    ("kaldi-wav-scp", lambda d, f: _write(d / "k" / "wav.scp", f"a {f}\nb\n") and d / "k",
     "wav.scp:2: expected '<recording-id> <audio file>'"),
    ("kaldi-pipe", lambda d, f: _write(d / "k" / "wav.scp", f"a sox {f} -t wav - |\n") and d / "k",
     "wav.scp:1: a command pipeline"),
    ("kaldi-utt2spk", lambda d, f: (_write(d / "k" / "wav.scp", f"a {f}\n"),
                                    _write(d / "k" / "utt2spk", "a s1 extra\n"))[0].parent,
     "utt2spk:1: expected '<utt-id> <speaker-id>'"),
    ("kaldi-segments", lambda d, f: (_write(d / "k" / "wav.scp", f"a {f}\n"),
                                     _write(d / "k" / "segments", "s1 a 0 1\ns2 a one 2\n"))[0].parent,
     "segments:2: start and end must be seconds"),
    ("kaldi-segments-recording", lambda d, f: (_write(d / "k" / "wav.scp", f"a {f}\n"),
                                               _write(d / "k" / "segments", "s1 z 0 1\n"))[0].parent,
     "segments:1: recording 'z' is not in"),
    ("kaldi-duplicate", lambda d, f: _write(d / "k" / "wav.scp", f"a {f}\na {f}\n") and d / "k",
     "wav.scp:2: id 'a' again (first on line 1)"),
    ("nemo-missing-key", lambda d, f: _write(d / "m.json", json.dumps({"audio_filepath": str(f), "duration": 1.0,
                                                                      "text": "A"}) + "\n{\"audio_filepath\": \"x\"}\n"),
     "m.json:2: missing duration, text; expected a NeMo manifest line"),
    ("nemo-json", lambda d, f: _write(d / "m.json", json.dumps({"audio_filepath": str(f), "duration": 1.0,
                                                               "text": "A"}) + "\nnot json\n"),
     "m.json:2: not a JSON object"),
]


@pytest.mark.parametrize(("name", "make", "message"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_names_the_file_and_line_and_keeps_the_old_manifest(tmp_path, capsys, name, make, message):
    flac = _utterances()[0][1]
    fmt = "nemo" if name.startswith("nemo") else "kaldi"
    good = make_nemo(tmp_path / "good.json") if fmt == "nemo" else make_kaldi(tmp_path / "good")
    out = tmp_path / "out"
    split = "k" if fmt == "kaldi" else "m"
    assert prepare("--corpus", good, "--format", fmt, "--name", split, "--out", out) == 0
    before = (out / "manifests" / f"{split}.jsonl").read_bytes()
    capsys.readouterr()
    assert prepare("--corpus", make(tmp_path / "bad", flac), "--format", fmt, "--name", split, "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("asr prepare: error: ") and len(err.splitlines()) == 1
    assert (out / "manifests" / f"{split}.jsonl").read_bytes() == before


def test_missing_lhotse_is_one_line_naming_pip_install(tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_lhotse(name, *args, **kwargs):
        if name == "lhotse" or name.startswith("lhotse."):
            raise ImportError("No module named 'lhotse'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lhotse)
    with gzip.open(tmp_path / "cuts.jsonl.gz", "wt") as f:
        f.write("{}\n")
    assert prepare("--corpus", tmp_path / "cuts.jsonl.gz", "--out", tmp_path / "out") == 2
    assert "pip install lhotse" in capsys.readouterr().err


def test_audio_of_other_rates_and_channels_is_skipped_or_converted(tmp_path):
    _, flac, text = _utterances()[0]
    samples, rate = sf.read(str(flac), dtype="float32")
    stereo = tmp_path / "stereo.wav"
    sf.write(stereo, np.stack([samples, samples], axis=1), rate, subtype="FLOAT")
    fast = tmp_path / "fast.wav"
    sf.write(fast, samples, 8000, subtype="FLOAT")
    folder = make_kaldi(tmp_path / "k", lowercase=False)
    (folder / "wav.scp").write_text(f"stereo {stereo}\nfast {fast}\n")
    (folder / "text").write_text(f"stereo {text}\nfast {text}\n")
    (folder / "utt2spk").unlink()
    assert prepare("--corpus", folder, "--out", tmp_path / "out") == 0
    summary = json.loads((tmp_path / "out" / "manifests" / "k.summary.json").read_text())
    assert summary["skipped_by_reason"] == {"wrong sample rate": 1}
    (entry,) = read_manifest(tmp_path / "out" / "manifests" / "k.jsonl")
    assert entry["id"] == "stereo" and sf.info(entry["audio"]).channels == 1
    assert np.abs(sf.read(entry["audio"], dtype="float32")[0] - samples).max() <= 1 / 32768 + 1e-6
    assert prepare("--corpus", folder, "--out", tmp_path / "out", "--resample") == 0
    assert [e["id"] for e in read_manifest(tmp_path / "out" / "manifests" / "k.jsonl")] == ["fast", "stereo"]


@pytest.mark.usefixtures("one_thread")
def test_an_imported_kaldi_dir_trains_through_the_recipes_stages(tmp_path):
    """A Kaldi directory goes through prepare, shard and tokenizer to `asr train`: two supervised
    steps of a tiny model, a checkpoint, and a dev evaluation on the imported split."""
    make_kaldi(tmp_path / "kaldi" / "train")
    assert prepare("--corpus", tmp_path / "kaldi" / "train", "--name", "train", "--out", tmp_path / "data") == 0
    assert main(["shard", "--manifests", str(tmp_path / "data" / "manifests"), "--out", str(tmp_path / "shards")]) == 0
    assert main(["tokenizer", "--kind", "letters", "--out", str(tmp_path / "tok")]) == 0
    step = 20.0
    assert main(["train", f"data.shards_dir={tmp_path / 'shards'}", "data.train_split=train",
                 "data.dev_splits=[train]", "pl.enabled=false", f"tokenizer.path={tmp_path / 'tok'}",
                 f"train.exp_dir={tmp_path / 'exp'}", "train.device=cpu", "data.num_workers=0",
                 f"data.max_batch_seconds={step}", f"data.max_duration={step}", f"scaling.reference_seconds={step}",
                 "model.d_model=32", "model.num_layers=1", "model.num_heads=2", "model.ffn_dim=64",
                 "model.pos_conv_kernel=8", "model.pos_conv_groups=4", "data.num_buckets=1",
                 f"schedule.total_hours={2 * step / 3600}", "schedule.warmup_hours=0", "pl.start_hours=0",
                 f"train.eval_every_hours={step / 3600}", "train.log_every_steps=1"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "exp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2]
    assert any(r["kind"] == "dev_wer" and "student/train" in r for r in rows)
