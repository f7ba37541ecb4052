"""Training-step throughput, model FLOPs utilisation and memory of a config on one device.

Runs the real training step's compute path: log-mel + SpecAugment on the device, the CTC
student under bf16 autocast (SDPA attention with padding masks), the CTC loss, gradient
clipping, the fused optimizer and the EMA teacher update, on random waveforms whose lengths
follow LibriSpeech's (10-16.5 s mostly), packed to ``data.max_batch_seconds`` per batch.
The data pipeline is measured separately (benchmarks/loader.py).

    python -m benchmarks.train_step --config configs/base.yaml --steps 50
    python -m benchmarks.train_step --config configs/librispeech_paper.yaml --steps 200 data.max_batch_seconds=1600

Prints one markdown row: config, parameters, batch seconds, step time, audio seconds per
second, model TFLOP/s and MFU (against the dense bf16 peak given by --peak-tflops), peak memory.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from asr.config import load_config
from asr.data.features import LogMelFeatures
from asr.data.specaug import SpecAugment
from asr.ema import EMATeacher
from asr.model import build_model
from asr.scaling import derive
from asr.train import build_optimizer, ctc_loss


def librispeech_like_lengths(rng: np.random.Generator, total_seconds: float) -> list[float]:
    """Utterance durations (s) filling one batch: 12.7 s mean, 80% in 10-16.5 s, 1-24.5 s."""
    durations: list[float] = []
    while True:
        d = float(np.clip(rng.normal(13.2, 2.6) if rng.random() < 0.85 else rng.uniform(1.0, 24.5), 1.0, 24.5))
        longest = max([*durations, d])
        if longest * (len(durations) + 1) > total_seconds:
            return durations or [d]
        durations.append(d)


def model_flops_per_frame(cfg, n_frames: float) -> float:
    """Forward FLOPs per encoder frame: 2 x matmul parameters + attention (QK^T and AV)."""
    m = cfg.model
    per_block = 2 * (4 * m.d_model**2 + 2 * m.d_model * m.ffn_dim) + 2 * 2 * m.d_model * n_frames
    return m.num_layers * per_block


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="torch.compile(dynamic=True) the student (fails with torch 2.11: docs/PERFORMANCE.md)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    cfg = load_config(args.config, args.overrides)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else None
    torch.manual_seed(0)
    model = build_model(cfg.model, n_mels=cfg.features.n_mels, vocab_size=29).to(device)
    features = LogMelFeatures.from_config(cfg.features).to(device)
    specaug = SpecAugment.from_config(cfg.specaug).to(device)
    hp = derive(cfg, world_size=1)
    optimizer = build_optimizer(cfg.optim.name, list(model.parameters()), hp, device)
    teacher = EMATeacher(model)
    student = torch.compile(model, dynamic=True) if args.compile else model
    rng = np.random.default_rng(0)
    sr = cfg.features.sample_rate

    batches = []
    for _ in range(8):  # a few distinct shapes, as in real training
        durations = librispeech_like_lengths(rng, cfg.data.max_batch_seconds)
        lengths = torch.tensor([int(d * sr) for d in durations])
        waves = torch.randn(len(durations), int(lengths.max())) * 0.1
        texts = torch.randint(1, 29, (len(durations), int(max(durations) * 14)))
        target_lengths = torch.tensor([int(d * 14) for d in durations])
        batches.append((waves.pin_memory() if device.type == "cuda" else waves, lengths, texts, target_lengths))

    def step(batch) -> float:
        waves, lengths, targets, target_lengths = (t.to(device, non_blocking=True) for t in batch)
        with torch.no_grad():
            feats, feat_lengths = features(waves, lengths)
            feats = specaug(feats, feat_lengths)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            log_probs, out_lengths = student(feats, feat_lengths)
        keep = torch.ones_like(out_lengths, dtype=torch.bool)
        loss = ctc_loss(log_probs, out_lengths, targets, target_lengths, keep)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        teacher.update(model, hp.rho)
        return float(lengths.sum()) / sr

    for i in range(args.warmup):
        step(batches[i % len(batches)])
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    audio, frames, t0 = 0.0, 0.0, time.perf_counter()
    flops = 0.0
    for i in range(args.steps):
        batch = batches[i % len(batches)]
        audio += step(batch)
        n_frames = float(model.output_lengths(features.frame_lengths(batch[1])).sum())
        longest = float(model.output_lengths(features.frame_lengths(batch[1].max()[None]))[0])
        flops += 3 * n_frames * model_flops_per_frame(cfg, longest)  # forward + 2x backward
        frames += n_frames
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    tflops = flops / seconds / 1e12
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else math.nan
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print("| config | device | params (M) | batch (s) | step (ms) | x real time | model TFLOP/s | MFU | peak mem (GiB) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    mode = " (compiled)" if args.compile else ""
    print(f"| {args.config}{mode} {' '.join(args.overrides)} | {name} | {params / 1e6:.1f} | {cfg.data.max_batch_seconds:g} | "
          f"{1000 * seconds / args.steps:.1f} | {audio / seconds:.0f} | {tflops:.1f} | "
          f"{100 * tflops / args.peak_tflops:.1f}% | {peak:.1f} |", flush=True)


if __name__ == "__main__":
    main()
