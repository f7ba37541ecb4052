"""Greedy decoding speed of a dev-clean-sized set (2,703 utterances, 5.4 h) on one device.

Runs ``asr.evaluate.decode_set``, the code behind ``asr eval`` (length-sorted batches of at
most ``--batch-seconds`` padded audio, log-mel on the device, bf16 model, greedy CTC, one
device-to-host copy a batch), on in-memory random waveforms with dev-clean's duration profile,
so the number is decoding itself: audio reading is measured by benchmarks/loader.py.

    python -m benchmarks.decode --config configs/base.yaml --batch-seconds 1600
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from asr.config import load_config
from asr.data.features import LogMelFeatures
from asr.evaluate import EvalSet, decode_set
from asr.model import build_model
from asr.text.tokenizer import LetterTokenizer


def dev_clean_like(n: int = 2703, hours: float = 5.39, seed: int = 0) -> np.ndarray:
    """Durations (s) shaped like dev-clean: 1.5-33 s, mean 7.2 s, long right tail."""
    rng = np.random.default_rng(seed)
    d = np.clip(rng.gamma(2.2, 1.0, n), 0.2, None)
    d = 1.45 + d / d.sum() * (hours * 3600 - 1.45 * n)
    return np.minimum(d, 32.6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--batch-seconds", type=float, default=1600.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    cfg = load_config(args.config, args.overrides)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else None
    tokenizer = LetterTokenizer()
    model = build_model(cfg.model, n_mels=cfg.features.n_mels, vocab_size=tokenizer.vocab_size).to(device)
    features = LogMelFeatures.from_config(cfg.features).to(device)
    durations = dev_clean_like()
    sr = cfg.features.sample_rate
    noise = np.random.default_rng(1).standard_normal(int(durations.max() * sr) + 1).astype(np.float32) * 0.1
    eval_set = EvalSet("dev-clean-like", [f"utt{i}" for i in range(len(durations))], [""] * len(durations),
                       ["0"] * len(durations), durations, lambda i: noise[: int(durations[i] * sr)])
    times = []
    for _ in range(args.repeats + 1):  # the first pass warms up kernels and the allocator
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        hyps = decode_set(model, features, eval_set, tokenizer, device, batch_seconds=args.batch_seconds,
                          autocast_dtype=dtype, num_workers=4)
        times.append(time.perf_counter() - t0)
    assert len(hyps) == len(durations)
    best = min(times[1:])
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print("| config | device | params (M) | utterances | audio (h) | batch (s) | decode (s, best of "
          f"{args.repeats}) | x real time |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| {args.config} | {name} | {params:.1f} | {len(durations)} | {durations.sum() / 3600:.2f} | "
          f"{args.batch_seconds:g} | {best:.2f} | {durations.sum() / best:.0f} |", flush=True)


if __name__ == "__main__":
    main()
