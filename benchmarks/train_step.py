"""Training-step throughput of the trainer's own step, on the batches its own sampler packs.

    python -m benchmarks.train_step --config configs/librispeech_paper.yaml --seconds 400 800 \
        --baseline path/to/plain_ctc_transformer.py --json step.json

The batches come from :class:`asr.data.sampler.EpochPlan` over LibriSpeech-shaped durations
(train-960's distribution: 12.3 s mean, 1-24.5 s), with random audio and transcripts of 15
letters a second; the step is :func:`asr.step.train_step` on parts built by
:func:`asr.train.build`, exactly as ``asr train`` runs it (bf16, fused optimizer, compiled
encoder blocks with ``--compile blocks``). Every timed step is on a batch of a shape not seen
before, as in training, and the same batches are then timed again (seen shapes): kernels that
plan per shape (cuDNN's attention) differ between the two. Reported per row: step time,
real-audio and padded-audio x real time, peak memory, and MFU:

    MFU = 3 x sum over the blocks actually run (LayerDrop's skipped ones are not work) and over
          the batch's utterances of (2 (4 d^2 + 2 d f) t + 4 d t^2) / step time / peak

with t an utterance's real encoder frames, d the width and f the feed-forward width: the
matmul and attention FLOPs of forward + backward, the formula of the plain baseline. With
``--baseline``, the plain PyTorch step of the same size is run in the same process tree at the
same audio per step, eager and compiled, and the ratio of real-time factors is printed.
Also timed: the teacher's forward + greedy labels against a student step, and the EMA update.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from asr.config import load_config
from asr.data.loader import Batch
from asr.data.sampler import DataPosition, EpochPlan
from asr.metrics import Meter
from asr.pseudo_label import make_pseudo_labels
from asr.runtime import setup_runtime
from asr.scaling import Schedule
from asr.step import SkippedSteps, StepOptions, train_step
from asr.text.tokenizer import LetterTokenizer
from asr.train import build, compiles, make_teacher

SAMPLE_RATE = 16000


def librispeech_durations(n: int, rng: np.random.Generator) -> np.ndarray:
    """Utterance durations shaped like LibriSpeech's training parts: most 10-16.5 s, some short."""
    long = np.clip(rng.normal(13.9, 2.1, n), 1.0, 24.5)
    short = rng.uniform(1.0, 10.0, n)
    return np.where(rng.random(n) < 0.85, long, short).astype(np.float32)


def sampler_batches(seconds: float, count: int, seed: int = 0) -> list[Batch]:
    """``count`` micro-batches as the trainer's sampler packs them at ``seconds`` per batch."""
    rng = np.random.default_rng(seed)
    durations = librispeech_durations(20_000, rng)
    plan = EpochPlan.build(durations, max_batch_seconds=seconds, num_buckets=16, min_duration=0.5,
                           max_duration=min(30.0, seconds), seed=seed, epoch=0)
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ '"
    batches = []
    for b in rng.choice(len(plan), size=count, replace=False):
        members = plan.batch(int(b))
        lengths = torch.tensor([int(durations[i] * SAMPLE_RATE) for i in members])
        waves = torch.randn(len(members), int(lengths.max())) * 0.1
        texts = ["".join(rng.choice(list(letters), size=int(durations[i] * 15))).strip() or "A" for i in members]
        padded = len(members) * float(lengths.max()) / SAMPLE_RATE
        batches.append(Batch(waves=waves, lengths=lengths, keys=[str(i) for i in members], texts=texts,
                             truths=None, sample_rate=SAMPLE_RATE, seconds=float(lengths.sum()) / SAMPLE_RATE,
                             padded_seconds=padded, epoch=0, position=DataPosition(), failed=0,
                             duplicate=False))
    return batches


def step_flops(cfg, model, features, batch: Batch, blocks_run: int) -> float:
    """Forward + backward FLOPs of one step over ``batch`` (see the module docstring)."""
    m = cfg.model
    t = model.output_lengths(features.frame_lengths(batch.lengths)).double()
    per_block = (2 * (4 * m.d_model**2 + 2 * m.d_model * m.ffn_dim) * t + 4 * m.d_model * t**2).sum().item()
    return 3 * blocks_run * per_block


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def cuda_time(fn, repeats: int) -> float:
    """Mean seconds of ``fn()`` over ``repeats`` calls, after the GPU is idle."""
    synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize()
    return (time.perf_counter() - t0) / repeats


def profile_steps(step, first: int, count: int) -> dict:
    """Where ``count`` steps' time goes, by the profiler: the GPU's busy share of the wall time
    (kernel time over wall time: under 1 means the GPU waits for the host), kernel launches and
    host-device synchronisations per step, and the costliest kernels and host operators."""
    from torch.profiler import ProfilerActivity, profile

    synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for i in range(first, first + count):
            step(i)
        synchronize()
        wall = time.perf_counter() - t0
    events = prof.events()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    kernel_s = sum(e.device_time_total for e in kernels) / 1e6  # us -> s
    syncs = sum(1 for e in events if e.name in ("cudaStreamSynchronize", "cudaDeviceSynchronize",
                                                 "cudaEventSynchronize"))
    copies_to_host = sum(1 for e in events if e.name == "Memcpy DtoH (Device -> Pinned)"
                         or e.name == "Memcpy DtoH (Device -> Pageable)")
    averages = prof.key_averages()
    top_kernels = sorted((a for a in averages if a.device_time_total > 0 and a.cpu_time_total == 0),
                         key=lambda a: a.device_time_total, reverse=True)[:10]
    top_host = sorted(averages, key=lambda a: a.self_cpu_time_total, reverse=True)[:10]
    return {
        "wall_ms_per_step": 1e3 * wall / count, "gpu_busy": kernel_s / wall,
        "kernels_per_step": len(kernels) / count, "syncs_per_step": max(syncs - 1, 0) / count,
        "copies_to_host_per_step": copies_to_host / count,
        "top_kernels_ms_per_step": [(a.key[:80], a.device_time_total / 1e3 / count, a.count // count)
                                    for a in top_kernels],
        "top_host_ms_per_step": [(a.key[:80], a.self_cpu_time_total / 1e3 / count, a.count // count)
                                 for a in top_host],
    }


def print_profile(label: str, p: dict) -> None:
    print(f"#### Profile: {label}")
    print(f"{p['wall_ms_per_step']:.1f} ms a step, GPU busy {100 * p['gpu_busy']:.0f}% of it, "
          f"{p['kernels_per_step']:.0f} kernels, {p['syncs_per_step']:.1f} synchronisations and "
          f"{p['copies_to_host_per_step']:.1f} copies to the host a step")
    for title, rows in (("kernel", p["top_kernels_ms_per_step"]), ("host operator (self)", p["top_host_ms_per_step"])):
        print(f"| {title} | ms a step | calls a step |\n| --- | ---: | ---: |")
        for name, ms, calls in rows:
            print(f"| `{name.replace('|', '/')}` | {ms:.2f} | {calls} |")
    print(flush=True)


def measure(config: str, seconds: float, compile_mode: str, steps: int, warmup: int, peak_tflops: float,
            overrides: list[str], profile: bool = False) -> dict:
    cfg = load_config(config, [*overrides, f"data.max_batch_seconds={seconds}",
                               f"data.max_duration={min(30.0, seconds)}", f"train.compile={compile_mode}",
                               f"scaling.reference_seconds={seconds}"])
    rt = setup_runtime("auto", "auto")
    torch.manual_seed(0)
    parts = build(cfg, rt, LetterTokenizer(), Schedule(cfg, 1))
    if compiles(cfg, rt):  # as asr train compiles, student and teacher alike
        parts.model.compile_blocks()
    parts.teacher = make_teacher(parts, cfg)
    options = StepOptions(grad_clip=cfg.optim.grad_clip)
    meter, skipped = Meter(rt.device), SkippedSteps(rt.device)
    batches = [b.pin_memory() if rt.device.type == "cuda" else b for b in sampler_batches(seconds, warmup + steps + 4)]
    blocks_run: list[int] = []  # LayerDrop's decisions, recorded outside any compiled region
    decide = parts.model.encoder._blocks_to_run

    def recording_decide() -> list[bool]:
        run = decide()
        blocks_run.extend(1 for keep in run if keep)
        return run

    parts.model.encoder._blocks_to_run = recording_decide

    def step(i: int) -> None:
        parts.model.set_layerdrop_seed(i)
        train_step(parts, [batches[i % len(batches)]], unlabeled=False, augment=True, rho=0.999,
                   options=options, meter=meter, skipped=skipped)

    t0 = time.perf_counter()
    for i in range(warmup):
        step(i)
    synchronize()
    first_s = time.perf_counter() - t0
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    blocks_run.clear()
    audio = padded = flops = 0.0
    blocks_before = 0
    t0 = time.perf_counter()
    for i in range(warmup, warmup + steps):  # every batch a shape not seen before, as in training
        step(i)
        batch = batches[i]
        audio += batch.seconds
        padded += batch.padded_seconds
        flops += step_flops(cfg, parts.model, parts.features, batch, len(blocks_run) - blocks_before)
        blocks_before = len(blocks_run)
    synchronize()
    elapsed = time.perf_counter() - t0
    parts.model.encoder._blocks_to_run = decide
    t0 = time.perf_counter()
    for i in range(warmup, warmup + steps):  # the same batches again: every shape seen before
        step(i)
    synchronize()
    seen_s = (time.perf_counter() - t0) / steps
    profiled = profile_steps(step, warmup + steps, 4) if profile else None  # new shapes
    peak_mem = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else math.nan

    # the teacher's forward + greedy labels, as the pseudo-label step runs them
    def teacher_labels(batch: Batch) -> None:
        b = batch.to(rt.device)
        with torch.no_grad():
            feats, feat_lengths = parts.features(b.waves, b.lengths)
            with rt.autocast():
                log_probs, lengths = parts.teacher(feats, feat_lengths)
            make_pseudo_labels(log_probs, lengths, parts.model.output_lengths(feat_lengths), blank_id=0,
                               min_tokens=1, min_confidence=0.0)

    for b in batches[:3]:
        teacher_labels(b)
    teacher_s = cuda_time(lambda: [teacher_labels(b) for b in batches], 2) / len(batches)
    ema_s = cuda_time(lambda: parts.teacher.update(parts.model, torch.tensor(0.999, device=rt.device)), 20)
    # the update's memory floor: read teacher and student, write the teacher (fp32), the traffic
    # of one copy of 1.5x the weights
    params = sum(p.numel() for p in parts.teacher.module.parameters())
    src = torch.empty(3 * params // 2, device=rt.device)
    dst = torch.empty_like(src)
    copy_s = cuda_time(lambda: dst.copy_(src), 20)
    step_s = elapsed / steps
    return {
        "config": config, "compile": compile_mode, "audio_s_per_step": audio / steps,
        "padded_s_per_step": padded / steps, "params_M": sum(p.numel() for p in parts.model.parameters()) / 1e6,
        "step_ms": 1e3 * step_s, "step_ms_seen_shapes": 1e3 * seen_s, "x_real_time": audio / elapsed, "x_real_time_padded": padded / elapsed,
        "model_tflops": flops / elapsed / 1e12, "mfu": flops / elapsed / 1e12 / peak_tflops,
        "peak_mem_gib": peak_mem, "first_steps_s": first_s,
        "teacher_labels_over_step": teacher_s / step_s, "ema_ms": 1e3 * ema_s, "ema_floor_ms": 1e3 * copy_s,
        "profile": profiled,
    }


def run_baseline(path: str, seconds: list[float], out: Path) -> list[dict]:
    """The plain PyTorch step of the same size, eager and compiled, in its own process."""
    subprocess.run([sys.executable, path, "--seconds", *map(str, seconds), "--json", str(out)], check=True)
    return json.loads(out.read_text())[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", required=True, help="a config (repeatable)")
    parser.add_argument("--seconds", type=float, nargs="+", default=[400.0, 800.0], help="audio per GPU step")
    parser.add_argument("--compile", nargs="+", default=["blocks", "none"], choices=["blocks", "none"])
    parser.add_argument("--attention", nargs="+", default=["auto"], choices=["auto", "torch", "flash_efficient"],
                        help="model.attention_kernels of each row")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)")
    parser.add_argument("--baseline", help="path of the plain PyTorch baseline script")
    parser.add_argument("--json", type=Path, help="write every row here too")
    parser.add_argument("--profile", action="store_true",
                        help="also profile 4 steps of each row: GPU busy share, launches, syncs, top kernels")
    parser.add_argument("overrides", nargs="*", help="config overrides for every row")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks.train_step measures a GPU step; no CUDA device is visible")

    rows, profiles = [], []
    baseline = run_baseline(args.baseline, args.seconds, args.json.with_suffix(".baseline.json")
                            if args.json else Path("baseline.json")) if args.baseline else []
    print(f"## {torch.cuda.get_device_name()}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    print("| config | compile, attention | audio s/step (real / padded) | step ms (new / seen shapes) | x real time (real / padded) | MFU | "
          "peak GiB | vs compiled plain | teacher+labels / step | EMA ms (floor) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for config in args.config:
        for seconds in args.seconds:
            for mode, kernels in itertools.product(args.compile, args.attention):
                try:
                    r = measure(config, seconds, mode, args.steps, args.warmup, args.peak_tflops,
                                [*args.overrides, f"model.attention_kernels={kernels}"], args.profile)
                except torch.OutOfMemoryError:
                    print(f"| {config} | {mode} | {seconds:g} | out of memory |", flush=True)
                    torch.cuda.empty_cache()
                    continue
                plain = [b for b in baseline if b["mode"] == "compiled" and abs(b["audio_s_per_step"] - seconds) / seconds < 0.05
                         and abs(b["params_M"] - r["params_M"]) / b["params_M"] < 0.05]  # same size only
                r["vs_compiled_plain"] = r["x_real_time"] / plain[0]["x_real_time"] if plain else math.nan
                rows.append(r)
                r["attention_kernels"] = kernels
                print(f"| {config} | {mode}, {kernels} | {r['audio_s_per_step']:.0f} / {r['padded_s_per_step']:.0f} | "
                      f"{r['step_ms']:.1f} / {r['step_ms_seen_shapes']:.1f} | {r['x_real_time']:.0f} / {r['x_real_time_padded']:.0f} | "
                      f"{100 * r['mfu']:.1f}% | {r['peak_mem_gib']:.1f} | {r['vs_compiled_plain']:.2f}x | "
                      f"{r['teacher_labels_over_step']:.2f} | {r['ema_ms']:.2f} ({r['ema_floor_ms']:.2f}) |",
                      flush=True)
                profiles.append((f"{config}, {seconds:g} s, {mode}, {kernels}", r["profile"]))
                torch.cuda.empty_cache()
    if baseline:
        print("| plain baseline | mode | audio s/step | step ms | x real time | MFU | peak GiB |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for b in baseline:
            print(f"| plain | {b['mode']} | {b['audio_s_per_step']:.0f} | {b['step_ms']:.1f} | "
                  f"{b['x_real_time']:.0f} | {100 * b['mfu_vs_peak']:.1f}% | {b['peak_mem_gib']:.1f} |")
    for label, p in profiles:
        if p is not None:
            print_profile(label, p)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "baseline": baseline}, indent=1))


if __name__ == "__main__":
    main()
