"""The step benchmark measures what the trainer runs: its sampler's batches, its own step."""

from __future__ import annotations

import torch

from asr.config import load_config
from asr.metrics import Meter
from asr.runtime import Runtime
from asr.scaling import Schedule
from asr.step import SkippedSteps, StepOptions, train_step
from asr.text.tokenizer import LetterTokenizer
from asr.train import build
from benchmarks.train_step import sampler_batches, step_flops


def test_sampler_batches_are_packed_like_the_trainers():
    batches = sampler_batches(400.0, 6)
    assert all(b.padded_seconds <= 400.0 for b in batches)
    real, padded = sum(b.seconds for b in batches), sum(b.padded_seconds for b in batches)
    assert 0.95 < real / padded <= 1.0  # duration buckets: little padding, unlike random packing
    assert all(len(b.texts) == len(b) == b.waves.shape[0] for b in batches)


def test_the_benchmarked_step_runs_on_the_trainers_parts(one_thread):
    cfg = load_config("configs/synth_tiny.yaml", ["model.num_layers=1", "model.d_model=32", "model.num_heads=2",
                                                  "model.ffn_dim=64", "data.max_batch_seconds=20"])
    rt = Runtime(0, 1, torch.device("cpu"), None)
    parts = build(cfg, rt, LetterTokenizer(), Schedule(cfg, 1))
    batch = sampler_batches(20.0, 1)[0]
    before = parts.model.head.weight.detach().clone()
    train_step(parts, [batch], unlabeled=False, augment=True, rho=0.99, options=StepOptions(),
               meter=Meter(rt.device), skipped=SkippedSteps(rt.device))
    assert not torch.equal(before, parts.model.head.weight)
    assert step_flops(cfg, parts.model, parts.features, batch, blocks_run=1) > 0
