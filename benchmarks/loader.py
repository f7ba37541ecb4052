"""Loader benchmark: decode + batching throughput, and padding waste against lhotse.

1. Throughput. About ``--minutes`` of 16 kHz FLAC utterances are sharded into a temporary
   folder (real LibriSpeech files from ``--corpus`` cycled to that length, or amplitude-
   modulated noise when no corpus is given) and ``--epochs`` passes are read with
   :class:`BatchLoader` at several worker counts; rates exclude the wait for the first batch
   (worker start-up), which is reported on its own. Side by side, the same batches are read the way a plain
   manifest loader would: each original FLAC file opened and decoded with soundfile. Every
   measurement follows an untimed warm-up pass, so both read from the page cache.
2. Padding waste, 1 - audio / (batch size x longest utterance), of our epoch plan and of
   lhotse's DynamicBucketingSampler at equal settings, on 28,539 durations shaped like
   LibriSpeech train-clean-100 (mean ~12.7 s, most in 10-16.5 s, 1-24.5 s). lhotse is a
   benchmark-only dependency (``pip install lhotse``); its column is skipped when absent.

    python benchmarks/loader.py --corpus ../shared/librispeech-mini --workers 0 1 4

Prints markdown tables (docs/PERFORMANCE.md, "Data loader").
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from asr.data.loader import BatchLoader
from asr.data.sampler import EpochPlan
from asr.data.shards import load_index, shard_split

SAMPLE_RATE = 16000
BATCH = dict(num_buckets=16, min_duration=0.5, max_duration=30.0, seed=0)


def librispeech_like_durations(n: int = 28_539, seed: int = 0) -> np.ndarray:
    """Seconds shaped like train-clean-100: 70% skewed towards 16.5 s within 10-16.5 s, 30% a
    broad tail over 1-24.5 s; mean ~12.7 s, ~80% within 10-16.5 s."""
    rng = np.random.default_rng(seed)
    main = 16.5 - 6.5 * rng.beta(1.3, 2.5, n)
    tail = 1.0 + 23.5 * rng.beta(2.0, 3.88, n)
    return np.where(rng.random(n) < 0.7, main, tail).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Throughput


def corpus_manifest(out: Path, minutes: float, corpus: Path | None) -> Path:
    """A manifest of at least ``minutes`` of audio: real FLAC files cycled, or synthetic noise."""
    entries = []
    if corpus is not None:
        files = sorted(corpus.rglob("*.flac"))
        if not files:
            raise SystemExit(f"--corpus {corpus}: no .flac files found")
        infos = [(path, sf.info(path).frames) for path in files]
        for copy in itertools.count():
            for path, frames in infos:
                entries.append({"id": f"{path.stem}_{copy}", "audio": str(path), "num_samples": frames})
            if sum(e["num_samples"] for e in entries) >= minutes * 60 * SAMPLE_RATE:
                break
    else:
        rng = np.random.default_rng(0)
        audio_dir = out / "audio"
        audio_dir.mkdir(parents=True)
        total = 0.0
        for i, seconds in enumerate(librispeech_like_durations(seed=1)):
            n = round(float(seconds) * SAMPLE_RATE)
            envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * np.arange(n) / SAMPLE_RATE) ** 2
            path = audio_dir / f"{i}.flac"
            sf.write(path, 0.05 * envelope * rng.standard_normal(n), SAMPLE_RATE, subtype="PCM_16")
            entries.append({"id": f"noise-{i}", "audio": str(path), "num_samples": n})
            total += float(seconds)
            if total >= minutes * 60:
                break
    manifest = out / "bench.jsonl"
    with open(manifest, "w") as f:
        for e in entries:
            e |= {"duration": e["num_samples"] / SAMPLE_RATE, "sample_rate": SAMPLE_RATE,
                  "text": "X", "speaker": "0", "chapter": "0"}
            f.write(json.dumps(e) + "\n")
    return manifest


def read_from_shards(index, workers: int, max_batch_seconds: float, epochs: int) -> tuple[float, float, float]:
    """Read ``epochs`` epochs through BatchLoader with ``workers``: (audio seconds, wall seconds)
    after the first batch, and the wait for the first batch (worker start-up)."""
    loader = BatchLoader(index, **BATCH, max_batch_seconds=max_batch_seconds, rank=0, world_size=1,
                         num_workers=workers)
    start = time.perf_counter()
    batches = iter(loader)
    next(batches)
    first = time.perf_counter()
    audio = sum(batch.seconds for batch in itertools.islice(batches, epochs * loader.batches_per_epoch - 1))
    return audio, time.perf_counter() - first, first - start


def read_from_files(index, paths: list[str], max_batch_seconds: float, epochs: int) -> tuple[float, float, None]:
    """The same epochs' batches, each original file decoded with soundfile, then zero-padded."""
    start = time.perf_counter()
    audio = 0
    for epoch in range(epochs):
        plan = EpochPlan.build(index.duration, **BATCH, max_batch_seconds=max_batch_seconds, epoch=epoch)
        for b in range(len(plan)):
            waves = [sf.read(paths[i], dtype="float32")[0] for i in plan.batch(b).tolist()]
            padded = np.zeros((len(waves), max(len(w) for w in waves)), dtype=np.float32)
            for row, wave in zip(padded, waves, strict=True):
                row[: len(wave)] = wave
            torch.from_numpy(padded)
            audio += sum(len(w) for w in waves)
    return audio / SAMPLE_RATE, time.perf_counter() - start, None


def throughput_table(minutes: float, corpus: Path | None, workers: list[int], max_batch_seconds: float,
                     epochs: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest = corpus_manifest(tmp, minutes, corpus)
        shard_split(manifest, tmp / "shards", shard_mb=64.0, jobs=1)
        index = load_index(tmp / "shards")
        by_key = {json.loads(line)["id"]: json.loads(line)["audio"] for line in manifest.read_text().splitlines()}
        paths = [by_key[index.key(i)] for i in range(len(index))]
        source = f"LibriSpeech FLAC ({corpus.name}, cycled)" if corpus else "modulated noise FLAC"
        rows = [f"Source: {source}, {len(index)} utterances, {index.hours * 60:.1f} min a pass, "
                f"{epochs} passes, max_batch_seconds={max_batch_seconds:g}; rates exclude the wait "
                "for the first batch.", "",
                "| reader | workers | first batch (s) | audio read (min) | wall (s) | x real time | "
                "x real time per worker |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        runs = [("tar shards + index (BatchLoader)", k) for k in workers] + [("FLAC files one by one (soundfile)", 0)]
        for name, k in runs:
            if "shards" in name:
                measure = lambda k=k: read_from_shards(index, k, max_batch_seconds, epochs)  # noqa: E731
            else:
                measure = lambda: read_from_files(index, paths, max_batch_seconds, epochs)  # noqa: E731
            measure()  # warm-up: page cache, first-touch allocations
            audio, wall, first = measure()
            label = f"{k} (in-process)" if k == 0 else str(k)
            wait = "-" if first is None else f"{first:.2f}"
            rows.append(f"| {name} | {label} | {wait} | {audio / 60:.1f} | {wall:.2f} | "
                        f"{audio / wall:,.0f} | {audio / wall / max(k, 1):,.0f} |")
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------
# Padding waste


def lhotse_waste(durations: np.ndarray, max_batch_seconds: float, num_buckets: int) -> tuple[float, int] | None:
    try:
        from lhotse import CutSet
        from lhotse.dataset.sampling.dynamic_bucketing import DynamicBucketingSampler
        from lhotse.testing.dummies import dummy_cut
    except ImportError:
        return None
    cuts = CutSet.from_cuts(dummy_cut(i, duration=float(d)) for i, d in enumerate(durations))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "eagerly read CutSet": irrelevant to batch composition
        sampler = DynamicBucketingSampler(cuts, max_duration=max_batch_seconds, num_buckets=num_buckets,
                                          shuffle=True, seed=0)
        audio = padded = 0.0
        batches = 0
        for batch in sampler:
            seconds = [cut.duration for cut in batch]
            audio += sum(seconds)
            padded += len(seconds) * max(seconds)
            batches += 1
    return 1.0 - audio / padded, batches


def waste_table(caps: list[float]) -> str:
    durations = librispeech_like_durations()
    num_buckets = BATCH["num_buckets"]
    rows = [f"{len(durations):,} durations, mean {durations.mean():.2f} s, "
            f"{np.mean((durations >= 10) & (durations <= 16.5)):.0%} within 10-16.5 s, "
            f"{durations.min():.1f}-{durations.max():.1f} s; num_buckets={num_buckets} for both.", "",
            "| max_batch_seconds | ours: waste | ours: batches | ours: plan time (ms) | lhotse: waste | lhotse: batches |",
            "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for cap in caps:
        start = time.perf_counter()
        plan = EpochPlan.build(durations, **BATCH | {"max_duration": min(30.0, cap)}, max_batch_seconds=cap, epoch=0)
        ms = (time.perf_counter() - start) * 1000
        theirs = lhotse_waste(durations, cap, num_buckets)
        lh = f"{theirs[0]:.2%} | {theirs[1]:,}" if theirs else "not installed | -"
        rows.append(f"| {cap:g} | {plan.padding_waste:.2%} | {len(plan):,} | {ms:.0f} | {lh} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=None,
                        help="folder of real FLAC files to cycle (default: synthetic noise)")
    parser.add_argument("--minutes", type=float, default=20.0, help="audio to shard for the throughput runs")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3, help="passes over the data per measurement")
    parser.add_argument("--max-batch-seconds", type=float, default=200.0)
    parser.add_argument("--waste-caps", type=float, nargs="*", default=[100.0, 200.0, 300.0, 600.0])
    parser.add_argument("--skip", choices=["throughput", "waste"], nargs="*", default=[])
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    print(f"Device: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores; "
          f"torch {torch.__version__}, soundfile {sf.__version__} (libsndfile {sf.__libsndfile_version__})\n")
    if "throughput" not in args.skip:
        print(throughput_table(args.minutes, args.corpus, args.workers, args.max_batch_seconds, args.epochs), "\n")
    if "waste" not in args.skip:
        print(waste_table(args.waste_caps))


if __name__ == "__main__":
    main()
