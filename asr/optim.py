"""The optimizer the scaling rules act on: built at the effective values, updated in place as the
schedule moves, stepped or skipped on the device.

The values themselves come from :mod:`asr.scaling`; this module only carries them into
``torch.optim`` (param_group entries and per-parameter state).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from asr import scaling


def build_optimizer(name: str, params: Iterable[torch.nn.Parameter], values: scaling.Derived,
                    device: torch.device) -> torch.optim.Optimizer:
    """The optimizer at the effective (kappa-scaled) values; fused kernels where torch has them.

    Fused optimizers read a ``found_inf`` flag on the device (:func:`optimizer_step`); Adagrad has
    a fused kernel on the CPU only.
    """
    params = list(params)
    fused = {"fused": True}
    if name == "sgd":
        return torch.optim.SGD(params, lr=values.lr, momentum=values.momentum,
                               weight_decay=values.weight_decay, **fused)
    if name == "adam":
        return torch.optim.Adam(params, lr=values.lr, betas=values.betas, eps=values.eps,
                                weight_decay=values.weight_decay, **fused)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=values.lr, betas=values.betas, eps=values.eps,
                                 weight_decay=values.weight_decay, **fused)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=values.lr, eps=values.eps, weight_decay=values.weight_decay,
                                   **(fused if device.type == "cpu" else {}))
    raise ValueError(f"optim.name: unknown optimizer {name!r}, expected one of {', '.join(scaling.OPTIMIZERS)}")


def apply_values(optimizer: torch.optim.Optimizer, values: scaling.Derived, lr: float) -> None:
    """Set the kappa-dependent entries (betas, eps, momentum, weight decay) and this step's lr."""
    for group in optimizer.param_groups:
        group.update(values.param_group())
        group["lr"] = lr


def rescale_state(optimizer: torch.optim.Optimizer, before: scaling.Derived, after: scaling.Derived) -> None:
    """At a change of kappa (a progressive stage, a resume at another batch), bring the carried
    state to what a run at the new kappa would hold (:func:`asr.scaling.optimizer_state_scales`)."""
    factors = scaling.optimizer_state_scales(before, after)
    for state in optimizer.state.values():
        for key, factor in factors.items():
            if key in state:
                state[key].mul_(factor)


def optimizer_step(optimizer: torch.optim.Optimizer, found_inf: torch.Tensor) -> None:
    """Step, unless ``found_inf`` (a 0/1 float tensor on the device) says a gradient is non-finite.

    Fused optimizers skip on the device, reading ``found_inf`` exactly as under
    ``torch.amp.GradScaler`` (no host sync). The others read the flag on the host first, as
    GradScaler does for them: the one optimizer path with a synchronisation (Adagrad on CUDA).
    """
    if all(group.get("fused") for group in optimizer.param_groups):
        optimizer.grad_scale, optimizer.found_inf = None, found_inf  # type: ignore[attr-defined]
        optimizer.step()
    elif not found_inf.item():
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
