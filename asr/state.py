"""What a training checkpoint holds beyond the weights: the loop's own state, the RNG streams, and
the payload layout that :mod:`asr.checkpoint` writes and reads.

Every stateful part of a run has ``state_dict``/``load_state_dict``: the model, the optimizer
and the teacher (torch's and :class:`asr.ema.EMATeacher`'s), the data positions
(:class:`asr.data.sampler.DataPosition`) and :class:`TrainState` below. ``load_state_dict``
takes every key it knows and refuses leftovers, so a checkpoint of another layout fails with a
sentence rather than half-loading.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from asr.config import config_from_dict
from asr.data.sampler import DataPosition
from asr.scaling import Derived, Schedule

PAYLOAD_KEYS = ("student", "teacher", "optimizer", "train_state", "rng", "aug_generator", "config",
                "tokenizer")
"""A training checkpoint's entries: weights of student and teacher (None before the teacher
exists), the optimizer, :class:`TrainState`, every rank's RNG states, the resolved config, and
the tokenizer itself (so evaluation decodes with the same units)."""


@dataclass
class TrainState:
    """The loop's own progress: everything a resume needs beyond weights, optimizer and RNGs."""

    step: int = 0
    """Optimizer steps taken, counted at the current batch (re-counted on a resume at another)."""
    labeled: DataPosition = field(default_factory=DataPosition)
    unlabeled: DataPosition = field(default_factory=DataPosition)
    updates: int = 0
    """Optimizer steps taken, never re-counted: labeled/unlabeled turns and checkpoint names."""
    kappa_history: list[dict[str, Any]] = field(default_factory=list)
    """One record per change of batch: the step, kappa, ranks, accumulation, peak lr and rho."""
    best_dev_wer: float = float("inf")
    skipped_steps: int = 0
    """Optimizer steps skipped for a non-finite gradient."""
    bad_data: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per split, utterance reads and reads skipped (audio that does not decode, text outside the
    tokenizer), summed over all ranks (:class:`asr.data.bad_data.BadData`)."""

    def audio_hours(self, labeled_epoch_hours: float, unlabeled_epoch_hours: float) -> float:
        """Real audio hours consumed by all ranks (padding excluded), from the data positions."""
        hours = self.labeled.epoch * labeled_epoch_hours + self.labeled.seconds / 3600
        return hours + self.unlabeled.epoch * unlabeled_epoch_hours + self.unlabeled.seconds / 3600

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step, "updates": self.updates,
            "labeled": self.labeled.state_dict(), "unlabeled": self.unlabeled.state_dict(),
            "kappa_history": list(self.kappa_history), "best_dev_wer": self.best_dev_wer,
            "skipped_steps": self.skipped_steps, "bad_data": {k: dict(v) for k, v in self.bad_data.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        self.step, self.updates = int(state.pop("step")), int(state.pop("updates"))
        self.labeled = DataPosition.from_state_dict(state.pop("labeled"))
        self.unlabeled = DataPosition.from_state_dict(state.pop("unlabeled"))
        self.kappa_history = list(state.pop("kappa_history"))
        self.best_dev_wer = float(state.pop("best_dev_wer"))
        self.skipped_steps = int(state.pop("skipped_steps"))
        self.bad_data = {k: dict(v) for k, v in state.pop("bad_data", {}).items()}  # absent before it was counted
        if state:
            raise ValueError(f"train state: unknown keys {sorted(state)}")


def kappa_record(step: int, values: Derived) -> dict[str, Any]:
    """A :attr:`TrainState.kappa_history` entry: the batch a run uses from optimizer step ``step``."""
    return {"step": step, "kappa": values.kappa, "world_size": values.world_size,
            "accum_steps": values.accum_steps, "lr": values.lr, "rho": values.rho}


def same_scale(record: dict[str, Any], values: Derived) -> bool:
    """Whether a kappa_history record describes the batch of ``values`` (kappa, ranks, accumulation)."""
    return all(record[key] == value for key, value in kappa_record(record["step"], values).items())


def training_payload(model: torch.nn.Module, teacher: Any, optimizer: torch.optim.Optimizer, state: TrainState,
                     rngs: list[dict[str, Any]], aug_generators: list[torch.Tensor], config: Any,
                     tokenizer: dict[str, Any]) -> dict[str, Any]:
    """A training checkpoint's payload (:data:`PAYLOAD_KEYS`), plain types and tensors only."""
    return {
        "student": model.state_dict(),
        "teacher": teacher.state_dict() if teacher is not None else None,
        "optimizer": optimizer.state_dict(),
        "train_state": state.state_dict(),
        "rng": rngs,
        "aug_generator": aug_generators,
        "config": config,
        "tokenizer": tokenizer,
    }


def saved_schedule(payload: dict[str, Any], state: TrainState) -> Schedule | None:
    """The schedule a checkpoint's steps ran on: its config at the world size it last recorded
    (None before its first step)."""
    if not state.kappa_history:
        return None
    return Schedule(config_from_dict(payload["config"]), int(state.kappa_history[-1]["world_size"]))


def continued_step(payload: dict[str, Any], state: TrainState, schedule: Schedule) -> int:
    """The checkpoint's step counted at this run's batch: the same data hours seen."""
    saved = saved_schedule(payload, state)
    return state.step if saved is None else schedule.resume_step(saved, state.step)


def rng_state(device: torch.device) -> dict[str, Any]:
    """The global torch RNG (dropout) of this process; SpecAugment has its own generator and
    LayerDrop its per-step seed, and nothing in training draws from Python's or numpy's RNG."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def check_payload(payload: dict[str, Any], where: str) -> None:
    """Refuse a checkpoint that is not a training checkpoint of this layout."""
    missing = [key for key in PAYLOAD_KEYS if key not in payload]
    if missing:
        raise ValueError(f"{where}: not a training checkpoint of this version (missing {', '.join(missing)})")
