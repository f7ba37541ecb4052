"""Size and load time of a shard index as large as full LibriSpeech (281,241 utterances).

The index is built from synthetic columns with LibriSpeech-like shapes: ids
``<speaker>-<chapter>-<utt>`` over 2,338 speakers, durations from 1 to 35 s (mean about
12.3 s, about 960 hours), transcripts of Zipf-distributed words at about 14.6 characters a second (about
180 characters on average), shards of about 1,000 utterances. Prints one markdown table.

    python -m benchmarks.index [--utterances 281241] [--repeats 5]    (from the repository root)
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from asr.data.shards import INDEX_FILE, build_index, load_index, save_index

CHARS_PER_SECOND = 14.6  # LibriSpeech train transcripts: characters per second of audio
SPEAKERS = 2338
UTTERANCES_PER_SHARD = 1000


def synthetic_columns(n: int, seed: int) -> dict[str, list]:
    """Per-utterance columns shaped like LibriSpeech's 960 h training set."""
    rng = np.random.default_rng(seed)
    duration = np.clip(rng.gamma(shape=9.0, scale=1.37, size=n), 1.0, 35.0).astype(np.float32)
    letters = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ'"))
    vocab = ["".join(rng.choice(letters[:26], size=k)) for k in rng.integers(2, 11, size=50_000)]
    word_length = np.array([len(w) + 1 for w in vocab])  # + the space after it
    draw = lambda size: np.minimum(rng.zipf(1.1, size=size), len(vocab)) - 1  # noqa: E731
    chars = duration * CHARS_PER_SECOND * rng.normal(1.0, 0.1, n)
    words_per_text = np.maximum(1, np.round(chars / word_length[draw(100_000)].mean()).astype(int))
    word_ids = draw(int(words_per_text.sum()))
    texts = [" ".join(vocab[w] for w in ids) for ids in np.split(word_ids, np.cumsum(words_per_text)[:-1])]
    speaker = rng.integers(0, SPEAKERS, size=n)
    keys = [f"{s + 19}-{198 + s * 7 + u // 120}-{u % 120:04d}" for u, s in enumerate(speaker)]
    num_samples = (duration.astype(np.float64) * 16000).astype(np.int64)
    size = num_samples * 2 * 6 // 10  # FLAC of speech: about 60% of 16-bit PCM
    shard = np.arange(n) // UTTERANCES_PER_SHARD
    offset = np.zeros(n, dtype=np.int64)
    for first in range(0, n, UTTERANCES_PER_SHARD):
        block = size[first : first + UTTERANCES_PER_SHARD] + 1536  # + headers and .json member
        offset[first : first + UTTERANCES_PER_SHARD] = 512 + np.concatenate(([0], np.cumsum(block)[:-1]))
    return {"keys": keys, "texts": texts, "speakers": [str(s + 19) for s in speaker], "shard": shard,
            "offset": offset, "size": size, "duration": duration, "num_samples": num_samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utterances", type=int, default=281_241)
    parser.add_argument("--repeats", type=int, default=5, help="load_index timings (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    columns = synthetic_columns(args.utterances, args.seed)
    shard_names = [f"shard-{k:06d}.tar" for k in range(int(columns["shard"][-1]) + 1)]
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        index = build_index("train-960", folder, shard_names, **columns)
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        save_index(index)
        save_s = time.perf_counter() - start
        disk_bytes = (Path(folder) / INDEX_FILE).stat().st_size
        del index, columns
        gc.collect()

        load_s = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            loaded = load_index(folder)
            load_s.append(time.perf_counter() - start)
            del loaded
        tracemalloc.start()
        loaded = load_index(folder)
        traced_bytes, peak_bytes = tracemalloc.get_traced_memory()
        tracemalloc.stop()

        rng = np.random.default_rng(args.seed)
        picks = rng.integers(0, len(loaded), size=100_000).tolist()
        start = time.perf_counter()
        for i in picks:
            loaded.text(i)
            loaded.key(i)
        lookup_us = (time.perf_counter() - start) / len(picks) * 1e6
        text_chars = int(loaded._texts.offsets[-1]) / len(loaded)

    mb = 1e6
    print("| utterances | hours | text chars (mean) | on disk (MB) | resident (MB) | load peak (MB) "
          "| build (s) | save (s) | load (s, median) | key+text lookup (µs) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| {len(loaded):,} | {loaded.hours:.0f} | {text_chars:.0f} | {disk_bytes / mb:.1f} "
          f"| {loaded.nbytes / mb:.1f} | {peak_bytes / mb:.1f} | {build_s:.2f} | {save_s:.2f} "
          f"| {statistics.median(load_s):.2f} | {lookup_us:.2f} |")
    assert traced_bytes >= loaded.nbytes * 0.99, "tracemalloc should see every array of the index"


if __name__ == "__main__":
    main()
