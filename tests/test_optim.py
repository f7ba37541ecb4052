"""The optimizer wiring: every optimizer the config offers is built at the scaled values, steps
on a finite gradient, and skips a non-finite one entirely (weights and state untouched)."""

from __future__ import annotations

import pytest
import torch

from asr.config import load_config
from asr.optim import apply_values, build_optimizer, optimizer_step
from asr.scaling import OPTIMIZERS, Schedule

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _setup(name: str, device: str) -> tuple[torch.nn.Linear, torch.optim.Optimizer]:
    cfg = load_config(None, [f"optim.name={name}", "optim.momentum=0.9" if name == "sgd" else "optim.lr=1e-3",
                             "data.max_batch_seconds=60", "scaling.reference_seconds=30"])
    values = Schedule(cfg, world_size=1).at(0).values  # kappa 2
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3).to(device)
    optimizer = build_optimizer(name, layer.parameters(), values, torch.device(device))
    apply_values(optimizer, values, values.lr)
    return layer, optimizer


def _state(layer: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    tensors = [p.detach().clone() for p in layer.parameters()]
    for state in optimizer.state.values():
        tensors += [v.detach().clone() for v in state.values() if isinstance(v, torch.Tensor)]
    return tensors


def _backward(layer: torch.nn.Module, poison: bool) -> torch.Tensor:
    loss = layer(torch.ones(2, 4, device=layer.weight.device)).square().sum()
    (loss * (float("nan") if poison else 1.0)).backward()
    norm = torch.nn.utils.clip_grad_norm_(layer.parameters(), 1.0)
    return (~torch.isfinite(norm)).float()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_steps_on_finite_and_skips_nonfinite_gradients(name, device):
    layer, optimizer = _setup(name, device)
    optimizer_step(optimizer, _backward(layer, poison=False))  # state exists from here on
    before = _state(layer, optimizer)
    optimizer_step(optimizer, _backward(layer, poison=True))
    after = _state(layer, optimizer)
    assert len(after) == len(before) and all(torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert all(p.grad is None for p in layer.parameters())  # gradients cleared either way
    optimizer_step(optimizer, _backward(layer, poison=False))
    assert not torch.equal(layer.weight, before[0])


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_carries_the_scaled_values(name):
    _, optimizer = _setup(name, "cpu")
    group = optimizer.param_groups[0]
    if name in ("adam", "adamw"):
        assert group["betas"] == pytest.approx((0.8, 0.96))  # 1 - 2 (1 - beta) at kappa 2
    if name == "sgd":
        assert group["momentum"] == pytest.approx(0.81)
