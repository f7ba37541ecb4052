"""Micro-benchmarks of the model parts that issue 14 found slow, each beside its alternative.

- the convolutional positional embedding (kernel 128, 16 groups): direct grouped Conv1d
  against the FFT, forward + backward under bf16 autocast;
- the EMA update of the paper model: the eager device-rho formula, the fused (compiled) one
  and a float-rho lerp, against the bandwidth floor, a plain copy of the same bytes (the
  update reads teacher and student and writes the teacher: 12 bytes per fp32 parameter);
- attention (SDPA, bf16) forward + backward with a boolean key-padding mask [B, 1, 1, T],
  without a mask, and with a dense additive float mask [B, 1, T, T] for reference;
- with ``--compile``, the 36 encoder blocks forward + backward, eager and ``compile_blocks``.

Sizes default to the paper model (configs/librispeech_paper.yaml) at 400 s of audio per
step: 30 ms encoder frames, utterances of ``--utterance-seconds``. Prints a markdown table.

    python -m benchmarks.model_parts                  # CUDA, paper sizes
    python -m benchmarks.model_parts --compile        # + the compiled encoder (~1 min compile)
    python -m benchmarks.model_parts --cpu-smoke      # tiny sizes on the CPU: checks it runs
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from asr.config import load_config
from asr.ema import EMATeacher
from asr.model import build_model
from asr.model.position import ConvPositionalEmbedding

PAPER_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "librispeech_paper.yaml"
FRAME_SECONDS = 0.03  # the conv1d front-end: stride 3 at a 10 ms hop


def timed(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> float:
    """Median milliseconds of ``fn`` over ``iters`` calls (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench_position(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> list[tuple[str, float]]:
    torch.manual_seed(0)
    module = ConvPositionalEmbedding(args.d_model, args.pos_kernel, args.pos_groups).to(device)
    x = torch.randn(args.batch, args.frames, args.d_model, device=device, requires_grad=True)
    lengths = torch.randint(args.frames // 2, args.frames + 1, (args.batch,), device=device)
    lengths[0] = args.frames
    pad_mask = torch.arange(args.frames, device=device) < lengths[:, None]
    rows = []
    for impl in ("direct", "fft"):
        module.impl = impl

        def step() -> None:
            with torch.autocast(device.type, dtype=dtype):
                y = module(x, pad_mask)
            y.float().square().mean().backward()

        rows.append((f"positional conv {impl}, fwd+bwd", timed(step, device, args.warmup, args.iters)))
    return rows


def bench_ema(args: argparse.Namespace, device: torch.device) -> list[tuple[str, float]]:
    with torch.device(device):
        student = build_model(args.model_cfg, 80, 32)
    params = sum(t.numel() for t in (*student.parameters(), *student.buffers()) if t.is_floating_point())
    rho = torch.where(torch.zeros((), device=device) > 0, 1.0, 0.9999)  # as the trainer makes it
    rows = []
    for label, teacher, weight in (
        ("EMA update, device rho, eager formula", EMATeacher(student, compile_update=False), rho),
        ("EMA update, device rho, fused", EMATeacher(student, compile_update=True), rho),
        ("EMA update, float rho, one lerp", EMATeacher(student), 0.9999),
    ):
        rows.append((label, timed(lambda t=teacher, w=weight: t.update(student, w), device, args.warmup, args.iters)))
        del teacher
    src = torch.empty(params * 3 // 2, device=device)
    dst = torch.empty_like(src)
    rows.append((f"bandwidth floor: copy of {params * 12 / 1e9:.2f} GB", timed(lambda: dst.copy_(src), device,
                                                                                args.warmup, args.iters)))
    return rows


def bench_attention(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> list[tuple[str, float]]:
    heads, head_dim = args.heads, args.d_model // args.heads
    q, k, v = (torch.randn(args.batch, heads, args.frames, head_dim, device=device, dtype=dtype,
                           requires_grad=True) for _ in range(3))
    lengths = torch.randint(args.frames // 2, args.frames + 1, (args.batch,), device=device)
    keys = torch.arange(args.frames, device=device) < lengths[:, None]
    bool_mask = keys[:, None, None, :]
    dense = torch.zeros(args.batch, 1, args.frames, args.frames, device=device, dtype=dtype)
    dense.masked_fill_(~bool_mask, float("-inf"))
    rows = []
    for label, mask in (("bool key mask [B,1,1,T]", bool_mask), ("no mask", None),
                        ("dense float mask [B,1,T,T]", dense)):
        def step(mask: torch.Tensor | None = mask) -> None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            y.float().square().mean().backward()

        rows.append((f"attention x{args.layers}, {label}, fwd+bwd",
                     args.layers * timed(step, device, args.warmup, args.iters)))
    return rows


def bench_encoder(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> list[tuple[str, float]]:
    with torch.device(device):
        eager = build_model(args.model_cfg, 80, 32).encoder.train()
    compiled = copy.deepcopy(eager)
    compiled.compile_blocks(backend=args.backend)
    x = torch.randn(args.batch, args.frames, args.d_model, device=device)
    lengths = torch.randint(args.frames // 2, args.frames + 1, (args.batch,), device=device)
    lengths[0] = args.frames
    rows = []
    for label, encoder in (("eager", eager), (f"compile_blocks ({args.backend})", compiled)):
        def step(encoder: torch.nn.Module = encoder) -> None:
            encoder.set_layerdrop_seed(0)
            with torch.autocast(device.type, dtype=dtype):
                y = encoder(x, lengths)
            y.float().square().mean().backward()

        t0 = time.perf_counter()
        step()  # the first call compiles
        first = time.perf_counter() - t0
        rows.append((f"encoder {args.layers} blocks, {label}, fwd+bwd (first call {first:.1f} s)",
                     timed(step, device, args.warmup, args.iters)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=PAPER_CONFIG, help="model sizes from this config")
    parser.add_argument("--seconds", type=float, default=400.0, help="audio per step (s)")
    parser.add_argument("--utterance-seconds", type=float, default=12.5, help="padded utterance length (s)")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time the encoder with compile_blocks")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend for --compile")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU (a check that it runs)")
    args = parser.parse_args()

    cfg = OmegaConf.to_object(load_config(args.config).model)
    if args.cpu_smoke:
        device, dtype = torch.device("cpu"), torch.bfloat16
        cfg = dataclasses.replace(cfg, d_model=64, num_layers=2, num_heads=4, ffn_dim=128,
                                  pos_conv_kernel=16, pos_conv_groups=4)
        args.seconds, args.utterance_seconds, args.iters, args.warmup = 6.0, 1.5, 2, 1
        if args.backend == "inductor":
            args.backend = "eager"  # no C++ toolchain needed for the smoke run
    elif torch.cuda.is_available():
        device, dtype = torch.device("cuda"), torch.bfloat16
    else:
        raise SystemExit("no CUDA device: run with --cpu-smoke for a CPU check at tiny sizes")
    args.model_cfg = cfg
    args.d_model, args.heads, args.layers = cfg.d_model, cfg.num_heads, cfg.num_layers
    args.pos_kernel, args.pos_groups = cfg.pos_conv_kernel, cfg.pos_conv_groups
    args.frames = round(args.utterance_seconds / FRAME_SECONDS)
    args.batch = max(1, round(args.seconds / args.utterance_seconds))

    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"{device_name}, torch {torch.__version__}, {dtype}: d_model {args.d_model}, "
          f"{args.layers} blocks, batch {args.batch} x {args.frames} frames ({args.seconds:g} s of audio)\n")
    rows = [*bench_position(args, device, dtype), *bench_ema(args, device), *bench_attention(args, device, dtype)]
    if args.compile:
        rows += bench_encoder(args, device, dtype)
    print("| part | ms |\n| --- | ---: |")
    for label, ms in rows:
        print(f"| {label} | {ms:.3f} |")


if __name__ == "__main__":
    main()
