"""The distributed, resumable loader over real tar shards: ranks, workers, resume, bad audio."""

from __future__ import annotations

import datetime
import itertools
import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from asr.data.loader import Batch, BatchLoader
from asr.data.sampler import DataPosition, PlanChangedError, rank_schedule
from asr.data.shards import SplitIndex, load_index, shard_split

SAMPLE_RATE = 16000
SETTINGS = dict(max_batch_seconds=2.0, num_buckets=4, min_duration=0.1, max_duration=1.0, seed=5)
MINI = Path(__file__).resolve().parents[2] / "shared" / "librispeech-mini"


def write_split(root: Path, durations: list[float], *, shard_utterances: int, truths: bool = False) -> Path:
    """FLAC noise utterances -> manifest -> tar shards + index (the `asr shard` writer)."""
    audio_dir = root / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i, seconds in enumerate(durations):
        samples = round(seconds * SAMPLE_RATE)
        path = audio_dir / f"{i}.flac"
        sf.write(path, 0.1 * rng.standard_normal(samples), SAMPLE_RATE, subtype="PCM_16")
        entry = {"id": f"7-1-{i:04d}", "audio": str(path), "duration": samples / SAMPLE_RATE,
                 "num_samples": samples, "sample_rate": SAMPLE_RATE, "speaker": "7", "chapter": "1",
                 "text": "" if truths else f"WORD {i}"}
        if truths:
            entry["truth"] = f"TRUTH {i}"
        lines.append(json.dumps(entry))
    manifest = root / "train.jsonl"
    manifest.write_text("".join(line + "\n" for line in lines))
    shard_split(manifest, root / "shards", shard_utterances=shard_utterances, jobs=1)
    return root / "shards"


def split_durations() -> list[float]:
    rng = np.random.default_rng(1)
    return [0.05, 1.5, *np.round(rng.uniform(0.1, 0.6, 40), 3).tolist()]  # two outside [0.1, 1.0]


@pytest.fixture(scope="module", params=[1, 14], ids=["1-shard", "14-shards"])
def split_dir(request, tmp_path_factory) -> Path:
    """40 kept utterances in one shard (fewer shards than ranks x workers) or 14 (more)."""
    root = tmp_path_factory.mktemp(f"split{request.param}")
    return write_split(root, split_durations(), shard_utterances=math.ceil(42 / request.param))


@pytest.fixture(scope="module")
def index(split_dir) -> SplitIndex:
    return load_index(split_dir)


def kept_keys(index: SplitIndex) -> list[str]:
    return sorted(index.key(i) for i in range(len(index)) if 0.1 <= index.duration[i] <= 1.0)


def make_loader(index: SplitIndex, **kwargs) -> BatchLoader:
    return BatchLoader(index, **{**SETTINGS, "rank": 0, "world_size": 1, "num_workers": 0, **kwargs})


def rest_of_epoch(loader: BatchLoader) -> list[Batch]:
    """The loader's batches up to the one whose round ends its starting epoch."""
    batches = []
    for batch in loader:
        batches.append(batch)
        if batch.position.epoch > loader.start.epoch:
            return batches
    raise AssertionError("unreachable: the stream is infinite")


def real_keys(streams: list[list[Batch]]) -> list[str]:
    return sorted(key for stream in streams for batch in stream if not batch.duplicate for key in batch.keys)


# ---------------------------------------------------------------------------------------------
# Ranks x workers x shards


@pytest.mark.parametrize("num_workers", [0, 1, 2])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_every_rank_reads_the_same_number_of_batches_and_an_epoch_covers_every_kept_utterance(
        index, world_size, num_workers):
    loaders = [make_loader(index, rank=r, world_size=world_size, num_workers=num_workers)
               for r in range(world_size)]
    streams = [rest_of_epoch(loader) for loader in loaders]
    assert {len(stream) for stream in streams} == {loaders[0].batches_per_epoch // world_size}
    assert real_keys(streams) == kept_keys(index)
    duplicates = sum(batch.duplicate for stream in streams for batch in stream)
    assert duplicates == loaders[0].duplicate_batches_per_epoch < world_size
    for rank, stream in enumerate(streams):  # exactly the scheduled batches, in order, whatever the workers
        schedule = rank_schedule(loaders[rank].planner, DataPosition(), rank=rank, world_size=world_size)
        expected = [[index.key(i) for i in s.indices] for s in itertools.islice(schedule, len(stream))]
        assert [batch.keys for batch in stream] == expected


def test_a_batch_holds_the_decoded_audio_zero_padded(index):
    batch = next(iter(make_loader(index)))
    assert batch.waves.dtype == torch.float32 and batch.lengths.dtype == torch.int64
    assert batch.waves.shape == (len(batch), batch.lengths.max().item())
    for row, key, length in zip(batch.waves, batch.keys, batch.lengths.tolist(), strict=True):
        i = next(i for i in range(len(index)) if index.key(i) == key)
        source, _ = sf.read(index.root.parent / "audio" / f"{i}.flac", dtype="float32")
        assert length == index.num_samples[i] == len(source)
        assert torch.equal(row[:length], torch.from_numpy(source)) and torch.all(row[length:] == 0)
        assert batch.texts[batch.keys.index(key)] == f"WORD {i}"
    assert batch.truths is None and batch.failed == 0 and not batch.duplicate
    assert batch.seconds == pytest.approx(batch.lengths.sum().item() / SAMPLE_RATE)
    assert batch.padded_seconds == pytest.approx(batch.waves.numel() / SAMPLE_RATE)
    assert batch.padded_seconds <= SETTINGS["max_batch_seconds"] + 1e-6


def test_unlabeled_batches_carry_empty_texts_and_the_held_out_truths(tmp_path):
    index = load_index(write_split(tmp_path, [0.2, 0.3, 0.4], shard_utterances=2, truths=True))
    batch = next(iter(make_loader(index)))
    assert batch.texts == [""] * len(batch)
    assert batch.truths == [f"TRUTH {int(key.rsplit('-', 1)[1])}" for key in batch.keys]


def test_loader_reports_its_epoch_size(index):
    loader = make_loader(index, world_size=3)
    assert loader.dropped_utterances == 2
    assert loader.hours_per_epoch == pytest.approx(
        sum(float(index.duration[i]) for i in range(len(index)) if 0.1 <= index.duration[i] <= 1.0) / 3600)
    assert loader.batches_per_epoch % 3 == 0


# ---------------------------------------------------------------------------------------------
# Speed perturbation

SPEEDS = (0.9, 1.0, 1.1)


def test_speed_perturbation_reads_every_utterance_at_every_speed_once_an_epoch(index):
    loader = make_loader(index, speed_perturb=SPEEDS, max_duration=2.0)
    epoch = [b for b in rest_of_epoch(loader) if not b.duplicate]
    lengths: dict[str, list[int]] = {}
    for batch in epoch:
        for key, n in zip(batch.keys, batch.lengths.tolist(), strict=True):
            lengths.setdefault(key, []).append(n)
    expected: dict[str, list[int]] = {}  # each copy is kept or dropped by its own duration
    for i in range(len(index)):
        for f in SPEEDS:
            if 0.1 <= float(index.duration[i]) / f <= 2.0:  # sox `speed` f: 1/f as long
                expected.setdefault(index.key(i), []).append(round(int(index.num_samples[i]) / f))
    assert sorted(lengths) == sorted(expected)
    for key, n in expected.items():
        assert sorted(lengths[key]) == pytest.approx(sorted(n), abs=1)
    assert loader.utterances_per_epoch == sum(len(n) for n in expected.values())
    assert loader.dropped_utterances == 3 * len(index) - loader.utterances_per_epoch
    assert loader.hours_per_epoch == pytest.approx(sum(sum(n) for n in expected.values()) / SAMPLE_RATE / 3600,
                                                   rel=1e-3)


def test_speed_perturbation_batches_by_perturbed_duration_and_resumes_exactly(index):
    settings = dict(speed_perturb=SPEEDS, max_duration=2.0)
    whole = list(itertools.islice(iter(make_loader(index, **settings)), 30))
    assert all(b.padded_seconds <= SETTINGS["max_batch_seconds"] + 1e-6 for b in whole)
    resumed = list(itertools.islice(iter(make_loader(index, start=whole[11].position, **settings)), 18))
    assert keys_of(resumed) == keys_of(whole[12:])
    assert all(torch.equal(a.waves, b.waves) for a, b in zip(resumed, whole[12:], strict=True))
    with pytest.raises(PlanChangedError):  # other speeds are another plan
        make_loader(index, start=whole[11].position, speed_perturb=(0.95, 1.0), max_duration=2.0)


def test_slower_audio_is_the_same_sound_stretched():
    from asr.data.audio import resample

    t = np.arange(16000) / 16000
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    slow = resample(tone, round(16000 * 0.9), 16000)  # speed 0.9: 10/9 as long, 396 Hz
    assert len(slow) == round(16000 / 0.9)
    spectrum = np.abs(np.fft.rfft(slow))
    assert np.argmax(spectrum) * 16000 / len(slow) == pytest.approx(440 * 0.9, abs=2)


def test_bad_speed_factors_are_refused(index):
    with pytest.raises(ValueError, match="speed_perturb"):
        make_loader(index, speed_perturb=(1.0, 1.0))


# ---------------------------------------------------------------------------------------------
# Determinism and resume


def keys_of(batches: list[Batch]) -> list[list[str]]:
    return [batch.keys for batch in batches]


def test_same_settings_give_the_same_batches_and_a_new_epoch_a_new_order(index):
    first, again = (list(itertools.islice(iter(make_loader(index)), 25)) for _ in range(2))
    assert keys_of(first) == keys_of(again)
    n = make_loader(index).batches_per_epoch
    assert keys_of(first[:n]) != keys_of(list(itertools.islice(iter(make_loader(index, seed=6)), n)))
    epoch1 = list(itertools.islice(iter(make_loader(index, start=DataPosition(epoch=1))), n))
    assert keys_of(epoch1) != keys_of(first[:n])


@pytest.mark.parametrize("world_size, num_workers", [(1, 0), (2, 2), (3, 0)])
def test_resume_mid_epoch_on_the_same_world_size_yields_exactly_the_following_batches(
        index, world_size, num_workers):
    make = lambda rank, start=None: make_loader(  # noqa: E731
        index, rank=rank, world_size=world_size, num_workers=num_workers, start=start)
    straight = [list(itertools.islice(iter(make(r)), 8)) for r in range(world_size)]
    saved = straight[0][2].position.state_dict()  # checkpointed after round 3
    for rank in range(world_size):
        resumed = list(itertools.islice(iter(make(rank, DataPosition.from_state_dict(saved))), 5))
        assert keys_of(resumed) == keys_of(straight[rank][3:])


@pytest.mark.parametrize("old_world, new_world, rounds", [(4, 2, 2), (2, 3, 3), (1, 2, 5)])
def test_resume_on_another_world_size_skips_and_repeats_no_utterance(index, old_world, new_world, rounds):
    before = [list(itertools.islice(iter(make_loader(index, rank=r, world_size=old_world)), rounds))
              for r in range(old_world)]
    saved = DataPosition.from_state_dict(before[0][-1].position.state_dict())
    after = [rest_of_epoch(make_loader(index, rank=r, world_size=new_world, start=saved))
             for r in range(new_world)]
    assert saved.epoch == 0 and sum(len(b) for stream in before for b in stream) == saved.utterances
    assert sorted(real_keys(before) + real_keys(after)) == kept_keys(index)
    assert len({len(stream) for stream in after}) == 1


def test_a_changed_plan_is_refused_naming_the_change(index):
    saved = list(itertools.islice(iter(make_loader(index)), 3))[-1].position
    with pytest.raises(PlanChangedError, match=r"num_buckets: 4 -> 2"):
        make_loader(index, num_buckets=2, start=saved)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"rank": 2, "world_size": 2}, "rank 2 / world_size 2"), ({"num_workers": -1}, "num_workers")],
)
def test_impossible_loader_settings_are_refused(index, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_loader(index, **kwargs)


# ---------------------------------------------------------------------------------------------
# Audio that does not decode


def corrupt(index: SplitIndex, keys: list[str], into: Path) -> SplitIndex:
    """A copy of the split whose members ``keys`` have their FLAC header overwritten."""
    shutil.copytree(index.root, into)
    copy = load_index(into)
    for i in (i for i in range(len(copy)) if copy.key(i) in keys):
        with open(copy.shard_path(i), "r+b") as f:
            f.seek(int(copy.offset[i]))
            f.write(b"\0" * 64)
    return copy


def test_a_member_that_does_not_decode_is_skipped_counted_and_logged_once(index, tmp_path, caplog):
    loader = make_loader(index)
    clean = list(itertools.islice(iter(loader), loader.batches_per_epoch))
    b, bad_key = next((b, batch.keys[1]) for b, batch in enumerate(clean) if len(batch) > 1)
    broken = corrupt(index, [bad_key], tmp_path / "broken")
    caplog.set_level(logging.WARNING, logger="asr.data.loader")
    two_epochs = list(itertools.islice(iter(make_loader(broken)), 2 * loader.batches_per_epoch))
    assert two_epochs[b].failed == 1 and two_epochs[b].keys == [k for k in clean[b].keys if k != bad_key]
    assert two_epochs[b].seconds < clean[b].seconds
    assert sum(batch.failed for batch in two_epochs) == 2  # once per epoch
    assert all(bad_key not in batch.keys for batch in two_epochs)
    logged = [r.getMessage() for r in caplog.records if bad_key in r.getMessage()]
    assert len(logged) == 1 and str(broken.shard_path(0).parent) in logged[0]


def test_a_batch_whose_members_all_fail_becomes_a_placeholder_and_the_stream_goes_on(index, tmp_path):
    """Every rank must run the same passes: a micro-batch with nothing left is one second of
    silence with an empty text (dropped from the loss), counted, and the next batches follow."""
    clean = list(itertools.islice(iter(make_loader(index)), 3))
    broken = corrupt(index, clean[0].keys, tmp_path / "broken")
    got = list(itertools.islice(iter(make_loader(broken)), 3))
    assert got[0].placeholder and got[0].failed == len(clean[0]) and len(got[0]) == 0
    assert got[0].texts == [""] and got[0].waves.shape == (1, index.sample_rate) and not got[0].waves.any()
    assert got[0].position == clean[0].position and got[0].seconds == 0.0
    assert [b.keys for b in got[1:]] == [b.keys for b in clean[1:]]


def test_text_the_tokenizer_cannot_encode_is_skipped_and_counted(index):
    clean = next(iter(make_loader(index)))
    bad = clean.keys[0]
    text_of = {index.key(i): index.text(i) for i in range(len(index))}
    got = next(iter(make_loader(index, text_ok=lambda text: text != text_of[bad])))
    assert got.failed == 1 and got.keys == [k for k in clean.keys if k != bad]


# ---------------------------------------------------------------------------------------------
# Device transfer


def test_batch_to_moves_the_tensors_and_keeps_the_rest(index):
    batch = next(iter(make_loader(index)))
    moved = batch.to("cpu")
    assert torch.equal(moved.waves, batch.waves) and moved.keys == batch.keys and moved.position == batch.position


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs a CUDA device")
def test_pin_memory_pins_the_waveforms(index):
    batch = next(iter(make_loader(index, pin_memory=True, num_workers=1)))
    assert batch.waves.is_pinned() and batch.lengths.is_pinned()
    assert batch.to("cuda").waves.device.type == "cuda"


# ---------------------------------------------------------------------------------------------
# Several processes (gloo): what DDP sees


def _train_one_epoch(rank: int, world_size: int, split_dir: str, init_file: str, result: str) -> None:
    """One rank: an all_reduce per micro-batch (as DDP's gradient sync), then gather what it read."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=60))
    loader = BatchLoader(load_index(split_dir), **SETTINGS, rank=rank, world_size=world_size,
                         num_workers=rank % 2)
    batches, keys = 0, []
    for batch in loader:
        dist.all_reduce(torch.tensor([batch.seconds]))
        batches += 1
        keys += [] if batch.duplicate else batch.keys
        if batch.position.epoch == 1:
            break
    gathered: list = [None] * world_size
    dist.all_gather_object(gathered, {"batches": batches, "keys": keys})
    if rank == 0:
        Path(result).write_text(json.dumps(gathered))
    dist.destroy_process_group()


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_in_separate_processes_take_equal_steps_and_cover_the_epoch(tmp_path_factory, world_size):
    root = tmp_path_factory.mktemp(f"gloo{world_size}")
    split_dir = write_split(root, split_durations(), shard_utterances=3)
    result = root / "result.json"
    # fork, as torchrun-started ranks would: spawn re-imports torch in every rank and worker
    mp.start_processes(_train_one_epoch, args=(world_size, str(split_dir), str(root / "init"), str(result)),
                       nprocs=world_size, join=True, start_method="fork")
    gathered = json.loads(result.read_text())
    index = load_index(split_dir)
    expected_batches = make_loader(index, world_size=world_size).batches_per_epoch // world_size
    assert [g["batches"] for g in gathered] == [expected_batches] * world_size
    assert sorted(key for g in gathered for key in g["keys"]) == kept_keys(index)


# ---------------------------------------------------------------------------------------------
# Real LibriSpeech files


@pytest.mark.skipif(not MINI.is_dir(), reason=f"real LibriSpeech sample not found at {MINI}")
def test_real_librispeech_shards_load_on_two_ranks(tmp_path):
    from asr.data.manifest import prepare_split

    prepare_split(MINI / "LibriSpeech" / "test-other", tmp_path, jobs=1)
    shard_split(tmp_path / "manifests" / "test-other.jsonl", tmp_path / "shards", shard_utterances=30, jobs=1)
    index = load_index(tmp_path / "shards")
    settings = {**SETTINGS, "max_batch_seconds": 60.0, "max_duration": 30.0}
    streams = [rest_of_epoch(make_loader(index, **settings, rank=r, world_size=2)) for r in range(2)]
    assert real_keys(streams) == sorted(index.key(i) for i in range(len(index))) and len(index) == 101
    batch = streams[1][0]
    assert batch.texts[0] == index.text(next(i for i in range(len(index)) if index.key(i) == batch.keys[0]))
    assert batch.padded_seconds <= 60.0 and batch.seconds / batch.padded_seconds > 0.5
