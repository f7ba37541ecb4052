"""`asr prepare` + `asr shard` + the shard index: real LibriSpeech files and a corpus of bad entries."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import shutil
import subprocess
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.cli import main
from asr.data.audio import AudioDecodeError, decode_audio
from asr.data.manifest import prepare_corpus, read_manifest
from asr.data.shards import (
    build_index,
    load_index,
    read_audio,
    read_member,
    save_index,
    shard_split,
)
from asr.fileio import CountProgress, atomic_path, parallel_map, write_atomic

MINI = Path(__file__).resolve().parents[1].parent / "shared" / "librispeech-mini"
needs_mini = pytest.mark.skipif(
    not (MINI / "LibriSpeech").is_dir(),
    reason=f"real-speech fixture {MINI} is absent (115 LibriSpeech utterances, kept outside the repo)",
)
RATE = 16000


# ---------------------------------------------------------------------------------------------
# librispeech-mini: 115 real utterances


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> Path:
    """Prepare and shard librispeech-mini once, with two worker processes (the parallel path)."""
    out = tmp_path_factory.mktemp("mini")
    prepare_corpus(MINI, out, jobs=2)
    for split in ("dev-clean", "test-clean", "test-other"):
        shard_split(out / "manifests" / f"{split}.jsonl", out / "shards" / split, shard_mb=1.0, jobs=2)
    return out


def _trans_lines(split: str) -> dict[str, str]:
    lines = {}
    for path in (MINI / "LibriSpeech" / split).rglob("*.trans.txt"):
        for line in path.read_text().splitlines():
            utt_id, text = line.split(" ", 1)
            lines[utt_id] = text
    return lines


@needs_mini
@pytest.mark.parametrize("split, utterances", [("dev-clean", 9), ("test-clean", 5), ("test-other", 101)])
def test_mini_counts_per_split(mini, split, utterances):
    assert len(read_manifest(mini / "manifests" / f"{split}.jsonl")) == utterances
    assert len(load_index(mini / "shards" / split)) == utterances
    summary = json.loads((mini / "manifests" / f"{split}.summary.json").read_text())
    assert (summary["utterances"], summary["skipped"]) == (utterances, [])


@needs_mini
def test_mini_total_duration_and_durations_match_soundfile(mini):
    total = 0.0
    for split in ("dev-clean", "test-clean", "test-other"):
        index = load_index(mini / "shards" / split)
        for i, entry in enumerate(read_manifest(mini / "manifests" / f"{split}.jsonl")):
            info = sf.info(entry["audio"])
            assert (entry["num_samples"], entry["sample_rate"]) == (info.frames, info.samplerate)
            assert entry["duration"] == pytest.approx(info.duration)
            assert index.key(i) == entry["id"] and index.num_samples[i] == info.frames
            assert index.duration[i] == pytest.approx(info.duration, abs=1e-5)
            total += entry["duration"]
    assert total == pytest.approx(887.6, abs=0.05)


@needs_mini
@pytest.mark.parametrize("split", ["dev-clean", "test-clean", "test-other"])
def test_mini_texts_equal_trans_txt_lines(mini, split):
    entries = read_manifest(mini / "manifests" / f"{split}.jsonl")
    index = load_index(mini / "shards" / split)
    expected = _trans_lines(split)
    assert [e["id"] for e in entries] == sorted(expected)
    assert {e["id"]: e["text"] for e in entries} == expected
    assert [index.text(i) for i in range(len(index))] == [expected[e["id"]] for e in entries]
    assert not index.has_truth and index.truth(0) is None
    speakers = {e["id"]: (e["speaker"], e["chapter"]) for e in entries}
    assert all(speakers[k] == tuple(k.split("-")[:2]) for k in speakers)
    assert [index.speaker(i) for i in range(len(index))] == [e["speaker"] for e in entries]


@needs_mini
def test_mini_tar_lists_flac_json_pairs_in_manifest_order(mini):
    entries = read_manifest(mini / "manifests" / "test-other.jsonl")
    index = load_index(mini / "shards" / "test-other")
    assert len(index.shard_names) > 1, "shard_mb=1 must cut test-other into several shards"
    names = []
    for shard in index.shard_names:
        listing = subprocess.run(["tar", "tf", str(index.root / shard)], check=True,
                                 capture_output=True, text=True).stdout.split()
        names += listing
    assert names == [f"{e['id']}.{ext}" for e in entries for ext in ("flac", "json")]
    first = subprocess.run(["tar", "xOf", str(index.shard_path(0)), f"{entries[0]['id']}.json"],
                           check=True, capture_output=True, text=True).stdout
    assert json.loads(first) == {k: v for k, v in entries[0].items() if k != "audio"}


@needs_mini
def test_mini_read_member_is_the_source_flac_and_decodes_to_its_samples(mini):
    index = load_index(mini / "shards" / "dev-clean")
    for i, entry in enumerate(read_manifest(mini / "manifests" / "dev-clean.jsonl")):
        source = Path(entry["audio"]).read_bytes()
        assert read_member(index, i) == source  # 16 kHz FLAC is copied byte for byte
        expected, _ = sf.read(entry["audio"], dtype="float32")
        np.testing.assert_array_equal(read_audio(index, i), expected)
        np.testing.assert_array_equal(decode_audio(source), expected)


# ---------------------------------------------------------------------------------------------
# A small corpus of bad entries


def _tone(seconds: float, rate: int = RATE, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    return wave if channels == 1 else np.stack([wave] * channels, axis=1)


def _chapter(root: Path, split: str, speaker: str = "1", chapter: str = "10") -> Path:
    folder = root / "LibriSpeech" / split / speaker / chapter
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def bad_corpus(tmp_path) -> Path:
    """One labeled split with every kind of bad entry next to two good ones."""
    corpus = tmp_path / "corpus"
    folder = _chapter(corpus, "train-x")
    sf.write(folder / "1-10-0000.flac", _tone(0.5), RATE)
    sf.write(folder / "1-10-0001.flac", _tone(0.25), RATE)
    (folder / "1-10-0002.flac").write_bytes(b"fLaC" + os.urandom(200))  # corrupt
    sf.write(folder / "1-10-0003.flac", _tone(0.3), RATE)  # no transcript line
    sf.write(folder / "1-10-0005.flac", _tone(0.3), RATE)  # text normalizes to ""
    sf.write(folder / "1-10-0006.flac", _tone(0.4, rate=8000), 8000)  # wrong rate
    sf.write(folder / "1-10-0007.flac", _tone(0.3, channels=2), RATE)  # stereo
    (folder / "1-10.trans.txt").write_text(
        "1-10-0000 HELLO WORLD\n1-10-0001 don't stop\n1-10-0002 CORRUPT\n"
        "1-10-0004 NO AUDIO HERE\n1-10-0005 -- !\n1-10-0006 EIGHT KILOHERTZ\n1-10-0007 TWO CHANNELS\n"
    )
    return corpus


BAD_ENTRIES = {  # id -> reason in the summary
    "1-10-0002": "unreadable audio",
    "1-10-0003": "audio without transcript",
    "1-10-0004": "transcript without audio",
    "1-10-0005": "empty text",
    "1-10-0006": "wrong sample rate",
    "1-10-0007": "not mono",
}


def test_bad_entries_are_skipped_and_reported_with_their_reason(bad_corpus, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["prepare", "--corpus", str(bad_corpus), "--out", str(out), "--jobs", "1"]) == 0
    entries = read_manifest(out / "manifests" / "train-x.jsonl")
    assert [(e["id"], e["text"]) for e in entries] == [("1-10-0000", "HELLO WORLD"), ("1-10-0001", "DON'T STOP")]
    summary = json.loads((out / "manifests" / "train-x.summary.json").read_text())
    assert {s["id"]: s["reason"] for s in summary["skipped"]} == BAD_ENTRIES
    assert summary["utterances"] == 2 and summary["hours"] == pytest.approx(0.75 / 3600)
    err = capsys.readouterr().err
    for utt_id, reason in BAD_ENTRIES.items():
        assert f"skipped {utt_id}: {reason}" in err


def test_wrong_sample_rate_is_resampled_with_resample(bad_corpus, tmp_path):
    out = tmp_path / "out"
    assert main(["prepare", "--corpus", str(bad_corpus / "LibriSpeech"), "--out", str(out),
                 "--resample", "--jobs", "1"]) == 0
    entry = {e["id"]: e for e in read_manifest(out / "manifests" / "train-x.jsonl")}["1-10-0006"]
    assert (entry["sample_rate"], entry["num_samples"], entry["duration"]) == (RATE, 6400, 0.4)
    assert Path(entry["audio"]) == (out / "resampled" / "train-x" / "1-10-0006.flac").resolve()
    samples, rate = sf.read(entry["audio"], dtype="float32")
    assert rate == RATE and np.abs(samples[800:-800] - _tone(0.4)[800:-800]).max() < 0.01

    assert main(["shard", "--manifests", str(out / "manifests"), "--out", str(out / "shards"),
                 "--shard-utterances", "2", "--jobs", "1"]) == 0
    index = load_index(out / "shards" / "train-x")
    assert [index.key(i) for i in range(len(index))] == ["1-10-0000", "1-10-0001", "1-10-0006"]
    assert index.shard.tolist() == [0, 0, 1] and index.sample_rate == RATE
    np.testing.assert_array_equal(read_audio(index, 2), samples)


def test_wav_source_is_encoded_to_flac_and_bad_keys_are_skipped_in_shards(tmp_path):
    corpus = tmp_path / "corpus"
    folder = _chapter(corpus, "dev")
    sf.write(folder / "1-10-0000.wav", _tone(0.3), RATE, subtype="PCM_16")
    sf.write(folder / "1-10-0001.flac", _tone(0.3), RATE)
    (folder / "1-10.trans.txt").write_text("1-10-0000 WAVE FILE\n1-10-0001 FLAC FILE\n")
    out = tmp_path / "out"
    prepare_corpus(corpus, out, jobs=1)
    manifest = out / "manifests" / "dev.jsonl"
    manifest.write_text(manifest.read_text().replace('"id": "1-10-0001"', '"id": "1-10.0001"'))
    report = shard_split(manifest, out / "shards" / "dev", jobs=1)
    assert [(s["id"], s["reason"]) for s in report.skipped] == [("1-10.0001", "id unusable as a tar key")]
    index = load_index(out / "shards" / "dev")
    assert len(index) == 1 and read_member(index, 0)[:4] == b"fLaC"
    np.testing.assert_array_equal(read_audio(index, 0), sf.read(folder / "1-10-0000.wav", dtype="float32")[0])


def test_unlabeled_split_keeps_held_out_truth_apart_from_text(tmp_path):
    corpus = tmp_path / "corpus"
    folder = _chapter(corpus, "train-unlabeled", speaker="7", chapter="70")
    for utt in range(3):
        sf.write(folder / f"7-70-{utt:04d}.flac", _tone(0.2 + 0.1 * utt), RATE)
    (corpus / "held-out").mkdir()
    (corpus / "held-out" / "train-unlabeled.txt").write_text("7-70-0000 Hello, world!\n7-70-0002 SEEN\n")
    out = tmp_path / "out"
    summaries = prepare_corpus(corpus, out, jobs=1)
    assert not summaries["train-unlabeled"].labeled
    entries = read_manifest(out / "manifests" / "train-unlabeled.jsonl")
    assert [(e["text"], e.get("truth")) for e in entries] == [("", "HELLO WORLD"), ("", None), ("", "SEEN")]

    shard_split(out / "manifests" / "train-unlabeled.jsonl", out / "shards" / "train-unlabeled", jobs=1)
    index = load_index(out / "shards" / "train-unlabeled")
    assert index.has_truth
    assert [(index.text(i), index.truth(i)) for i in range(3)] == [("", "HELLO WORLD"), ("", None), ("", "SEEN")]
    assert index.speaker(0) == "7"


# ---------------------------------------------------------------------------------------------
# Re-runs, atomic writes, corrupt members, the index file


@pytest.fixture
def five_utterances(tmp_path) -> Path:
    """A prepared labeled split of five utterances; returns the manifest path."""
    corpus = tmp_path / "corpus"
    folder = _chapter(corpus, "dev")
    for utt in range(5):
        sf.write(folder / f"1-10-{utt:04d}.flac", _tone(0.2 + 0.05 * utt), RATE)
    (folder / "1-10.trans.txt").write_text("".join(f"1-10-{u:04d} WORD {u}\n" for u in range(5)))
    prepare_corpus(corpus, tmp_path / "out", jobs=1)
    return tmp_path / "out" / "manifests" / "dev.jsonl"


def _edit_second_text(manifest: Path, split_dir: Path) -> None:
    lines = manifest.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace('"WORD 1"', '"WORD ONE"')
    manifest.write_text("".join(lines))


def _touch_fourth_audio(manifest: Path, split_dir: Path) -> None:
    path = read_manifest(manifest)[3]["audio"]
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))


def _truncate_first_shard(manifest: Path, split_dir: Path) -> None:
    path = split_dir / "shard-000000.tar"
    path.write_bytes(path.read_bytes()[:1024])


def _delete_second_record(manifest: Path, split_dir: Path) -> None:
    (split_dir / "shard-000001.json").unlink()


@pytest.mark.parametrize("change, rewritten", [
    (None, []),
    (_edit_second_text, ["shard-000000.tar"]),
    (_touch_fourth_audio, ["shard-000001.tar"]),
    (_truncate_first_shard, ["shard-000000.tar"]),
    (_delete_second_record, ["shard-000001.tar"]),
])
def test_shard_rerun_rewrites_exactly_the_changed_shards(five_utterances, tmp_path, change, rewritten):
    split_dir = tmp_path / "shards" / "dev"
    first = shard_split(five_utterances, split_dir, shard_utterances=2, jobs=1)
    assert (first.shards, first.written, first.utterances) == (3, 3, 5)
    before = {p.name: p.stat().st_mtime_ns for p in split_dir.glob("*.tar")}
    if change is not None:
        change(five_utterances, split_dir)
    os.utime(split_dir / "shard-000002.tar", ns=(0, 1))  # a reused shard keeps this mtime
    before["shard-000002.tar"] = 1
    again = shard_split(five_utterances, split_dir, shard_utterances=2, jobs=1)
    after = {p.name: p.stat().st_mtime_ns for p in split_dir.glob("*.tar")}
    assert sorted(n for n in after if after[n] != before[n]) == rewritten
    assert (again.written, again.up_to_date) == (len(rewritten), 3 - len(rewritten))
    index = load_index(split_dir)
    assert [index.text(i) for i in range(5)] == [e["text"] for e in read_manifest(five_utterances)]
    assert all(read_member(index, i) == Path(e["audio"]).read_bytes()
               for i, e in enumerate(read_manifest(five_utterances)))


def test_shard_rerun_with_fewer_shards_removes_stale_ones(five_utterances, tmp_path):
    split_dir = tmp_path / "shards" / "dev"
    shard_split(five_utterances, split_dir, shard_utterances=1, jobs=1)
    assert len(list(split_dir.glob("shard-*.tar"))) == 5
    report = shard_split(five_utterances, split_dir, shard_utterances=4, jobs=1)
    assert sorted(p.name for p in split_dir.iterdir()) == [
        "index.npz", "shard-000000.json", "shard-000000.tar", "shard-000001.json", "shard-000001.tar"]
    assert report.shards == 2 and load_index(split_dir).shard.tolist() == [0, 0, 0, 0, 1]


def test_shard_failure_midway_leaves_only_whole_files(five_utterances, tmp_path, monkeypatch):
    from asr.data import shards

    original = shards._flac_bytes

    def fail_on_fourth(entry):
        if entry["id"] == "1-10-0003":
            raise RuntimeError("disk full")
        return original(entry)

    monkeypatch.setattr(shards, "_flac_bytes", fail_on_fourth)
    split_dir = tmp_path / "shards" / "dev"
    with pytest.raises(RuntimeError, match="disk full"):
        shard_split(five_utterances, split_dir, shard_utterances=2, jobs=1)
    assert sorted(p.name for p in split_dir.iterdir()) == ["shard-000000.json", "shard-000000.tar"]
    listing = subprocess.run(["tar", "tf", str(split_dir / "shard-000000.tar")], check=True,
                             capture_output=True, text=True).stdout.split()
    assert listing == ["1-10-0000.flac", "1-10-0000.json", "1-10-0001.flac", "1-10-0001.json"]


def test_prepare_failure_midway_leaves_no_manifest(bad_corpus, tmp_path, monkeypatch):
    from asr.data import manifest

    def fail(probe):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(manifest, "_probe_audio", fail)
    with pytest.raises(RuntimeError, match="interrupted"):
        prepare_corpus(bad_corpus, tmp_path / "out", jobs=1)
    assert list((tmp_path / "out").rglob("*.jsonl")) == []
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


def test_write_atomic_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "a.jsonl"
    write_atomic(path, "old\n")
    with pytest.raises(UnicodeEncodeError):
        write_atomic(path, "new \ud800\n")  # a lone surrogate fails half-way
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl"]


def test_corrupt_or_truncated_member_raises_audio_decode_error(five_utterances, tmp_path):
    split_dir = tmp_path / "shards" / "dev"
    shard_split(five_utterances, split_dir, shard_utterances=5, jobs=1)
    index = load_index(split_dir)
    with open(index.shard_path(1), "r+b") as f:  # keep the FLAC header, garble the frames
        f.seek(int(index.offset[1]) + 100)
        f.write(os.urandom(int(index.size[1]) - 100))
    with pytest.raises(AudioDecodeError) as err:
        read_audio(index, 1)
    assert err.value.key == "1-10-0001" and err.value.source == str(index.shard_path(1))
    assert pickle.loads(pickle.dumps(err.value)).key == "1-10-0001"
    np.testing.assert_array_equal(read_audio(index, 0), sf.read(read_manifest(five_utterances)[0]["audio"],
                                                                 dtype="float32")[0])

    with open(index.shard_path(4), "r+b") as f:
        f.truncate(int(index.offset[4]) + 10)
    with pytest.raises(AudioDecodeError, match="shard truncated"):
        read_member(index, 4)


def _read_in_child(index, i, queue):
    queue.put(read_member(index, i))


def test_read_member_in_forked_worker_opens_its_own_file(five_utterances, tmp_path):
    split_dir = tmp_path / "shards" / "dev"
    shard_split(five_utterances, split_dir, shard_utterances=5, jobs=1)
    index = load_index(split_dir)
    expected = [read_member(index, i) for i in range(5)]  # parent opens the shard first
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(index, 3, queue))
    child.start()
    assert queue.get(timeout=30) == expected[3]
    child.join(timeout=30)
    assert child.exitcode == 0
    assert [read_member(index, i) for i in range(5)] == expected  # the child closed only its copies
    assert [read_member(pickle.loads(pickle.dumps(index)), i) for i in range(5)] == expected


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "index.npz").unlink(), "no shard index in"),
    (lambda d: (d / "index.npz").write_bytes(b"not a zip"), "not a readable shard index"),
])
def test_load_index_names_the_folder_when_missing_or_bad(tmp_path, damage, message):
    split_dir = tmp_path / "dev"
    split_dir.mkdir()
    save_index(build_index("dev", split_dir, ["shard-000000.tar"], keys=["a"], texts=["A"], speakers=["1"],
                           shard=[0], offset=[512], size=[10], duration=[1.0], num_samples=[RATE]))
    damage(split_dir)
    with pytest.raises((FileNotFoundError, ValueError), match=message) as err:
        load_index(split_dir)
    assert str(split_dir) in str(err.value)


def test_load_index_refuses_another_format_version(tmp_path):
    index = build_index("dev", tmp_path, ["s.tar"], keys=["a", "b"], texts=["A", ""], speakers=["1", "2"],
                        shard=[0, 0], offset=[512, 2048], size=[10, 20], duration=[1.0, 2.5],
                        num_samples=[RATE, 40000], truths=[None, "B"])
    save_index(index)
    loaded = load_index(tmp_path)
    assert [loaded.key(1), loaded.text(1), loaded.truth(0), loaded.truth(1)] == ["b", "", None, "B"]
    assert loaded.duration.dtype == np.float32 and loaded.shard.dtype == np.int32
    with np.load(tmp_path / "index.npz") as npz:
        arrays = dict(npz)
    np.savez(tmp_path / "index.npz", **(arrays | {"format_version": np.array(99)}))
    with pytest.raises(ValueError, match="version 99"):
        load_index(tmp_path)


def test_shard_refuses_a_manifest_line_without_required_keys(tmp_path):
    manifest = tmp_path / "dev.jsonl"
    manifest.write_text('{"id": "a", "audio": "/x.flac"}\n')
    with pytest.raises(ValueError, match=r"dev.jsonl:1: missing keys duration"):
        shard_split(manifest, tmp_path / "shards", jobs=1)


def test_prepare_names_unknown_splits(bad_corpus, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"splits dev-other not found.*found: train-x"):
        prepare_corpus(bad_corpus, tmp_path / "out", splits=["dev-other"])
    shutil.rmtree(bad_corpus / "LibriSpeech" / "train-x")
    with pytest.raises(FileNotFoundError, match="no split folders with audio"):
        prepare_corpus(bad_corpus, tmp_path / "out")


def test_a_worker_that_dies_fails_the_map_instead_of_hanging_it():
    # os._exit kills the worker process outright, as the kernel's OOM killer or a crashing
    # native library would: the map must raise, not wait forever for the lost result.
    with pytest.raises(BrokenProcessPool):
        parallel_map(os._exit, [3, 3], jobs=2)
    with pytest.raises(BrokenProcessPool):
        parallel_map(os._exit, [3, 3], jobs=2, ordered=False)


class _Recorder:
    """A progress hook that keeps what it was told."""

    def __init__(self) -> None:
        self.updates: list[tuple[int, int]] = []
        self.closed = 0

    def update(self, done: int, result: int) -> None:
        self.updates.append((done, result))

    def close(self) -> None:
        self.closed += 1


@pytest.mark.parametrize(("jobs", "ordered"), [(1, True), (2, True), (2, False)])
def test_parallel_map_reports_every_result_to_its_progress_hook(jobs, ordered):
    progress = _Recorder()
    results = parallel_map(abs, list(range(-20, 0)), jobs=jobs, progress=progress, ordered=ordered)
    assert results == list(range(20, 0, -1)) if ordered else sorted(results) == list(range(1, 21))
    assert progress.updates == list(enumerate(results, 1)) and progress.closed == 1


def test_count_progress_prints_the_count_and_rate_to_a_log(capsys):
    parallel_map(abs, [1, 2, 3], jobs=1, progress=CountProgress("probe", 3))
    err = capsys.readouterr().err
    assert err.startswith("probe: 3 files in ") and err.endswith("files/s)\n")


def test_atomic_path_leaves_nothing_when_the_writer_fails(tmp_path):
    path = tmp_path / "model.pt"
    with pytest.raises(RuntimeError), atomic_path(path, fsync=True) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(path, fsync=True) as tmp:
        tmp.write_bytes(b"whole")
    assert path.read_bytes() == b"whole" and list(tmp_path.iterdir()) == [path]
