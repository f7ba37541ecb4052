"""Scaling rules: keep the training dynamics fixed in *data seen* when the batch size changes.

All hyper-parameters in the config hold at the reference batch (kappa = 1). A run whose global
batch is kappa times the reference gets effective values from one call, :func:`derive`, and
prints them with :func:`scaling_report`. The module is pure math: floats in, floats out, no
torch, no state.

kappa is the global data per optimizer step over the reference, where the global step counts
every rank and every gradient-accumulation micro-batch::

    kappa = per_rank_batch * world_size * accum_steps / reference_batch

Rules (Busbridge et al. 2023, "How to Scale Your EMA", arXiv 2307.13813; Malladi et al. 2022,
"On the SDEs and Scaling Rules for Adaptive Gradient Algorithms", arXiv 2205.10287). One step
at kappa must do what kappa steps at the reference do, to first order in the learning rate:

- EMA (``power``): rho -> rho^kappa. kappa updates at rho towards a fixed target equal one
  update at rho^kappa exactly; along a training run they agree up to O(kappa * lr) terms
  (Busbridge et al.'s EMA Scaling Rule, derived from the SDE of SGD with a model EMA).
- SGD: lr -> kappa * lr (the drift of kappa steps in one; the noise variance of a step falls by
  1/kappa, so the diffusion per unit of data is unchanged). Heavy-ball momentum is an EMA of
  gradients, so it keeps its timescale in data: mu -> mu^kappa. torch's buffer is a *sum*
  (v <- mu*v + g, step lr*v), whose steady-state step is lr/(1 - mu); keeping that step linear
  in kappa gives lr -> kappa * lr * (1 - mu^kappa) / (1 - mu), which is kappa * lr when mu = 0.
  L2 weight decay is part of the gradient and scales with the learning rate by itself.
- Adam/AdamW (Malladi et al.'s square-root SDE rule): lr -> sqrt(kappa) * lr,
  beta_i -> 1 - kappa * (1 - beta_i), eps -> eps / sqrt(kappa). Derivation in the noise-dominated
  regime the SDE describes: the second moment v ~ sigma^2 / B falls by kappa, so the normalised
  step m / sqrt(v) grows by sqrt(kappa) and the drift per step by kappa; the betas keep their
  averaging windows fixed in data; eps keeps its size relative to sqrt(v). AdamW's decoupled
  decay shrinks weights by (1 - lr * wd) per step; keeping the shrink per unit of data gives
  (1 - lr' * wd') = (1 - lr * wd)^kappa, used exactly here; to first order lr' * wd' =
  kappa * lr * wd, i.e. wd' = sqrt(kappa) * wd under the sqrt lr rule. The exact form can never
  leave (0, 1), and under an lr schedule (factor s) it differs from the first-order form only at
  O(s * (kappa * lr * wd)^2).
- Adagrad: lr unchanged, eps -> eps / kappa. Its accumulator is a *sum* of squared gradients,
  not an average. Where noise dominates, after D samples it holds (D / B) * sigma^2 / B, which
  at batch kappa * B is kappa^2 times smaller: sqrt(sum) falls by kappa, so the same lr already
  makes a step kappa times larger, the drift of kappa reference steps. The diffusion matches too:
  lr^2 * (sigma^2 / (kappa * B)) * kappa^2 / sum is kappa times one reference step's, once per
  kappa reference steps. eps keeps its size relative to sqrt(sum). Treating it like SGD
  (kappa * lr) runs kappa times too fast, Adam's sqrt(kappa) * lr sqrt(kappa) times. Limits:
  where the gradient dominates the noise the sum falls only by kappa and sqrt(kappa) * lr would
  be right; and the first steps differ (the sum holds one sample), a transient whose share of
  the noise fades only like log(kappa) / log(steps).
- ``none``: nothing is scaled, to show how the dynamics drift.

Schedules count **data hours**: the audio the optimizer steps taken so far stand for, each step
kappa_t * reference_seconds (the global batch's padded capacity, the quantity kappa is defined
on). Logs, plots and the scaling report use the same clock; the real audio seen (capacity less
padding, under 1% apart with the duration-bucketed sampler on LibriSpeech) is logged beside it.
A point at H data hours is reached after ceil(H * 3600 / (kappa * reference_seconds)) steps:
rounding up means a phase never starts before its amount of data, and any positive duration
lasts at least one step. With progressive stages the conversion is piecewise
(:class:`DataClock`). :class:`Schedule` answers every time-dependent value of a run from it.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

OptimizerName = Literal["sgd", "adam", "adamw", "adagrad"]
OptimizerRule = Literal["auto", "sgd", "adam", "adagrad", "none"]
EMARule = Literal["power", "none"]
OnInvalid = Literal["error", "warn"]
OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)
OPTIMIZER_RULES: tuple[str, ...] = get_args(OptimizerRule)
EMA_RULES: tuple[str, ...] = get_args(EMARule)
ON_INVALID: tuple[str, ...] = get_args(OnInvalid)

_AUTO_RULE = {"sgd": "sgd", "adam": "adam", "adamw": "adam", "adagrad": "adagrad"}
# The param_group keys of each torch.optim class that the rules can change.
_PARAM_GROUP_KEYS = {
    "sgd": ("lr", "momentum", "weight_decay"),
    "adam": ("lr", "betas", "eps", "weight_decay"),
    "adamw": ("lr", "betas", "eps", "weight_decay"),
    "adagrad": ("lr", "eps", "weight_decay"),
}
_LARGEST_BELOW_ONE = math.nextafter(1.0, 0.0)


class ScalingWarning(UserWarning):
    """A scaled hyper-parameter left its valid range and was clamped."""


# ---------------------------------------------------------------------------------------------
# kappa


def global_batch(per_rank_batch: float, world_size: int, accum_steps: int) -> float:
    """Data per optimizer step over all ranks and micro-batches (same unit as ``per_rank_batch``)."""
    _require(per_rank_batch > 0 and math.isfinite(per_rank_batch), "per-rank batch", per_rank_batch,
             "a positive, finite amount of data")
    _require(isinstance(world_size, int) and world_size >= 1, "world_size", world_size, "an integer >= 1")
    _require(isinstance(accum_steps, int) and accum_steps >= 1, "accum_steps", accum_steps, "an integer >= 1")
    return per_rank_batch * world_size * accum_steps


def compute_kappa(per_rank_batch: float, world_size: int, accum_steps: int,
                  reference_batch: float) -> float:
    """kappa = global batch / reference batch, both in seconds of padded audio."""
    _require(reference_batch > 0 and math.isfinite(reference_batch), "reference batch", reference_batch,
             "a positive, finite amount of data per optimizer step")
    return global_batch(per_rank_batch, world_size, accum_steps) / reference_batch


# ---------------------------------------------------------------------------------------------
# The rules, on plain floats


@dataclass(frozen=True)
class OptimizerParams:
    """The hyper-parameters the rules act on, named as in ``torch.optim`` param_groups."""

    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float = 0.0


def resolve_rule(optimizer: str, rule: str = "auto") -> str:
    """The rule ``auto`` stands for: each optimizer's own (AdamW uses Adam's)."""
    _require(optimizer in OPTIMIZERS, "optimizer", optimizer, f"one of {', '.join(OPTIMIZERS)}")
    _require(rule in OPTIMIZER_RULES, "optimizer rule", rule, f"one of {', '.join(OPTIMIZER_RULES)}")
    return _AUTO_RULE[optimizer] if rule == "auto" else rule


def scale_optimizer(base: OptimizerParams, kappa: float, optimizer: str, rule: str = "auto",
                    on_invalid: str = "warn") -> OptimizerParams:
    """Effective optimizer hyper-parameters at ``kappa`` (see the module docstring for each rule).

    A value pushed out of its valid range (an Adam beta with kappa * (1 - beta) >= 1) is clamped
    with a :class:`ScalingWarning`, or refused with ``ValueError`` when ``on_invalid="error"``.
    """
    _check_kappa(kappa)
    _require(on_invalid in ON_INVALID, "on_invalid", on_invalid, "warn or error")
    _require(base.lr > 0 and math.isfinite(base.lr), "optim.lr", base.lr,
             "a positive, finite learning rate")
    _require(base.eps > 0, "optim.eps", base.eps, "a positive epsilon")
    _require(0 <= base.momentum < 1, "optim.momentum", base.momentum, "a momentum in [0, 1)")
    _require(base.weight_decay >= 0, "optim.weight_decay", base.weight_decay, "a value >= 0")
    for i, beta in enumerate(base.betas):
        _require(0 <= beta < 1, f"optim.betas[{i}]", beta, "a value in [0, 1)")
    if optimizer == "adamw":
        _require(base.lr * base.weight_decay < 1, "optim.weight_decay", base.weight_decay,
                 f"lr * weight_decay < 1 (lr={base.lr}): AdamW shrinks weights by (1 - lr * wd) a step")

    rule = resolve_rule(optimizer, rule)
    if rule == "none":
        return base
    lr, betas, eps, momentum = base.lr, base.betas, base.eps, base.momentum
    if rule == "sgd":
        momentum = base.momentum**kappa
        lr = kappa * base.lr * (1 - momentum) / (1 - base.momentum)
    elif rule == "adam":
        lr = math.sqrt(kappa) * base.lr
        betas = (_scale_beta(base.betas[0], kappa, "optim.betas[0]", on_invalid),
                 _scale_beta(base.betas[1], kappa, "optim.betas[1]", on_invalid))
        eps = base.eps / math.sqrt(kappa)
    elif rule == "adagrad":
        eps = base.eps / kappa
    if eps < sys.float_info.min:
        eps = _invalid("optim.eps", base.eps, kappa, eps, sys.float_info.min, on_invalid,
                       "eps underflowed; it must stay > 0")
    weight_decay = base.weight_decay
    if optimizer == "adamw" and base.weight_decay > 0:
        # Same shrink per unit of data: (1 - lr' * wd') = (1 - lr * wd)^kappa.
        weight_decay = -math.expm1(kappa * math.log1p(-base.lr * base.weight_decay)) / lr
    return OptimizerParams(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, momentum=momentum)


def scale_ema(rho: float, kappa: float, rule: str = "power", on_invalid: str = "warn") -> float:
    """EMA momentum at ``kappa``: rho^kappa (``power``) or rho unchanged (``none``).

    rho^kappa must stay in (0, 1): a huge kappa underflows it to 0 (the teacher would be a plain
    copy of the student), a tiny one rounds it to 1 (the teacher would never move).
    """
    _check_kappa(kappa)
    _require(0 < rho < 1, "ema.rho", rho, "a momentum in (0, 1)")
    _require(rule in EMA_RULES, "ema rule", rule, f"one of {', '.join(EMA_RULES)}")
    _require(on_invalid in ON_INVALID, "on_invalid", on_invalid, "warn or error")
    if rule == "none":
        return rho
    scaled = math.exp(kappa * math.log(rho))
    if scaled < sys.float_info.min:
        return _invalid("ema.rho", rho, kappa, scaled, 0.0, on_invalid,
                        f"rho^kappa underflows below {sys.float_info.min:.3g}; needs kappa < "
                        f"{math.log(sys.float_info.min) / math.log(rho):.4g}")
    if scaled >= 1.0:
        return _invalid("ema.rho", rho, kappa, scaled, _LARGEST_BELOW_ONE, on_invalid,
                        "rho^kappa rounds to 1 and the teacher would never move")
    return scaled


def _scale_beta(beta: float, kappa: float, name: str, on_invalid: str) -> float:
    scaled = 1.0 - kappa * (1.0 - beta)
    if scaled < 0:
        return _invalid(name, beta, kappa, scaled, 0.0, on_invalid,
                        "1 - kappa * (1 - beta) must be >= 0, i.e. kappa <= 1 / (1 - beta) = "
                        f"{1 / (1 - beta):.4g}")
    if scaled >= 1.0:
        return _invalid(name, beta, kappa, scaled, _LARGEST_BELOW_ONE, on_invalid,
                        "1 - kappa * (1 - beta) rounds to 1")
    return scaled


def _invalid(name: str, base: float, kappa: float, scaled: float, clamped: float, on_invalid: str,
             limit: str) -> float:
    message = f"{name}={base:.12g} scaled at kappa={kappa:g} gives {scaled:.6g}: {limit}"
    if on_invalid == "error":
        raise ValueError(f"{message} (scaling.on_invalid=error)")
    warnings.warn(f"{message}; clamped to {clamped:.6g}", ScalingWarning, stacklevel=3)
    return clamped


# ---------------------------------------------------------------------------------------------
# Schedules: hours of audio <-> optimizer steps


def steps_for_hours(hours: float, seconds_per_step: float) -> int:
    """Optimizer steps after which ``hours`` of audio have been seen (rounded up)."""
    _require(hours >= 0 and math.isfinite(hours), "hours", hours, "finite hours >= 0")
    _require(seconds_per_step > 0, "seconds per step", seconds_per_step, "positive seconds")
    return _ceil(hours * 3600.0 / seconds_per_step)


def hours_for_steps(steps: int, seconds_per_step: float) -> float:
    """Hours of audio seen after ``steps`` optimizer steps."""
    _require(steps >= 0, "steps", steps, "an integer >= 0")
    return steps * seconds_per_step / 3600.0


def _ceil(x: float) -> int:
    """ceil that forgives float noise: 0.1 h at 36 s a step is 10.000000000000002, i.e. 10 steps."""
    nearest = round(x)
    return int(nearest) if abs(x - nearest) <= 1e-9 * max(1.0, abs(x)) else math.ceil(x)


@dataclass(frozen=True)
class DataClock:
    """Hours of audio seen <-> optimizer steps over a batch schedule of stages.

    Stage ``k`` begins once ``stage_hours[k]`` hours have been seen, at the first step boundary
    at or after that mark, and each of its steps stands for ``seconds_per_step[k]`` seconds of
    audio. One stage is the plain constant-batch conversion.
    """

    stage_hours: tuple[float, ...]
    """Nominal start of each stage in hours; the first is 0."""
    seconds_per_step: tuple[float, ...]
    """Audio seconds one optimizer step stands for in each stage (kappa * reference_seconds)."""

    def __post_init__(self) -> None:
        hours, seconds = self.stage_hours, self.seconds_per_step
        _require(len(hours) == len(seconds) >= 1, "stages", (hours, seconds),
                 "as many stage hours as seconds per step, at least one")
        _require(hours[0] == 0 and all(a < b for a, b in itertools.pairwise(hours)), "stage hours", hours,
                 "strictly increasing hours starting at 0")
        _require(all(s > 0 for s in seconds), "seconds per step", seconds, "positive seconds")

    @classmethod
    def constant(cls, seconds_per_step: float) -> DataClock:
        return cls((0.0,), (seconds_per_step,))

    def _starts(self) -> list[tuple[float, int]]:
        """(hours, step) at which each stage actually begins."""
        starts = [(0.0, 0)]
        for k in range(1, len(self.stage_hours)):
            hours, step = starts[-1]
            n = steps_for_hours(max(self.stage_hours[k] - hours, 0.0), self.seconds_per_step[k - 1])
            starts.append((hours + hours_for_steps(n, self.seconds_per_step[k - 1]), step + n))
        return starts

    def stage_at_hours(self, hours: float) -> int:
        """Index of the stage active once ``hours`` of audio have been seen.

        A sum of per-step hours carries float noise; :meth:`stage_at_step` is exact.
        """
        _require(hours >= 0 and math.isfinite(hours), "hours", hours, "finite hours >= 0")
        return _stage_index([start for start, _ in self._starts()], hours)

    def stage_at_step(self, step: int) -> int:
        """Index of the stage that optimizer step ``step`` (0-based) runs in."""
        _require(step >= 0, "step", step, "an integer >= 0")
        return max(k for k, (_, start) in enumerate(self._starts()) if start <= step)

    def steps_at(self, hours: float) -> int:
        """Optimizer steps after which ``hours`` of audio have been seen (rounded up)."""
        _require(hours >= 0 and math.isfinite(hours), "hours", hours, "finite hours >= 0")
        starts = self._starts()
        k = _stage_index([start for start, _ in starts], hours)
        start_hours, start_step = starts[k]
        return start_step + steps_for_hours(max(hours - start_hours, 0.0), self.seconds_per_step[k])

    def hours_at(self, steps: int) -> float:
        """Hours of audio seen after ``steps`` optimizer steps."""
        _require(steps >= 0, "steps", steps, "an integer >= 0")
        starts = self._starts()
        k = self.stage_at_step(steps)
        start_hours, start_step = starts[k]
        return start_hours + hours_for_steps(steps - start_step, self.seconds_per_step[k])


def _stage_index(start_hours: Sequence[float], hours: float) -> int:
    """Last stage begun by ``hours``, forgiving float noise of one part in 1e9."""
    return max(k for k, start in enumerate(start_hours) if start <= hours + 1e-9 * max(1.0, start))


# ---------------------------------------------------------------------------------------------
# From a config


@dataclass(frozen=True)
class ScheduleSteps:
    """Every schedule point of the config as a global optimizer-step index."""

    warmup: int
    """Steps of linear lr warm-up."""
    decay_start: int
    """Step at which the lr decay begins (not before the end of warm-up)."""
    decay_boundaries: tuple[int, ...]
    """``step`` decay: steps at which the lr is multiplied by ``schedule.step_factor``."""
    total: int
    """Length of training."""
    pl_start: int
    """First step of the pseudo-label phase."""
    specaug_start: int
    """Step from which SpecAugment is on."""
    eval_every: int
    """Dev evaluation cadence at this kappa (0: disabled); with progressive stages it changes."""
    checkpoint_every: int
    """Checkpoint cadence at this kappa; with progressive stages it changes."""


@dataclass(frozen=True)
class Derived:
    """Everything a run derives from (config, world size, accumulation): the one source of truth.

    Hyper-parameters are the effective ones at ``kappa``; the base ones stay in the config.
    """

    kappa: float
    reference_batch: float
    """Global seconds of padded audio per optimizer step at kappa = 1."""
    global_batch: float
    """kappa x reference_batch: the seconds one optimizer step of this run stands for."""
    global_batch_seconds: float
    """Padded-audio cap of one optimizer step: per-rank max_batch_seconds x world x accum."""
    seconds_per_step: float
    """Audio one optimizer step stands for in the schedules: kappa * reference_seconds."""
    world_size: int
    accum_steps: int
    optimizer: str
    optimizer_rule: str
    """The rule applied, ``auto`` resolved."""
    ema_rule: str
    lr: float
    """Peak learning rate."""
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    momentum: float
    rho: float
    """EMA teacher momentum per optimizer step."""
    steps: ScheduleSteps
    clock: DataClock
    """The run's hours <-> steps conversion (piecewise with progressive stages)."""

    @property
    def optimizer_params(self) -> OptimizerParams:
        return OptimizerParams(self.lr, self.betas, self.eps, self.weight_decay, self.momentum)

    def param_group(self) -> dict[str, Any]:
        """The ``torch.optim`` param_group entries of this optimizer (``lr`` is the peak)."""
        values = asdict(self.optimizer_params)
        return {key: values[key] for key in _PARAM_GROUP_KEYS[self.optimizer]}

    def to_dict(self) -> dict[str, Any]:
        """Plain types, for checkpoints and logs."""
        return asdict(self)


def derive(cfg: Any, world_size: int, accum_steps: int | None = None) -> Derived:
    """Effective hyper-parameters and schedule steps for a run on ``world_size`` ranks.

    ``accum_steps`` defaults to the first progressive stage's, else ``train.accum_steps``.
    """
    sc = cfg.scaling
    if accum_steps is None:
        first = sc.progressive[0].accum_steps if sc.progressive else cfg.train.accum_steps
        accum_steps = int(first)
    kappa = _kappa_for(cfg, world_size, accum_steps)
    optimizer = str(cfg.optim.name)
    rule = resolve_rule(optimizer, str(sc.optimizer_rule))
    base = OptimizerParams(lr=float(cfg.optim.lr), betas=_pair(cfg.optim.betas),
                           eps=float(cfg.optim.eps), weight_decay=float(cfg.optim.weight_decay),
                           momentum=float(cfg.optim.momentum))
    eff = scale_optimizer(base, kappa, optimizer, rule, on_invalid=str(sc.on_invalid))
    rho = scale_ema(float(cfg.ema.rho), kappa, str(sc.ema_rule), on_invalid=str(sc.on_invalid))

    clock = run_clock(cfg, world_size, accum_steps)
    seconds_per_step = kappa * float(sc.reference_seconds)
    sched = cfg.schedule
    steps = ScheduleSteps(
        warmup=clock.steps_at(sched.warmup_hours),
        decay_start=clock.steps_at(max(sched.decay_start_hours, sched.warmup_hours)),
        decay_boundaries=tuple(clock.steps_at(h) for h in sched.step_boundaries_hours),
        total=clock.steps_at(sched.total_hours),
        pl_start=clock.steps_at(cfg.pl.start_hours),
        specaug_start=clock.steps_at(cfg.specaug.start_hours),
        eval_every=steps_for_hours(cfg.train.eval_every_hours, seconds_per_step),
        checkpoint_every=steps_for_hours(cfg.train.checkpoint_every_hours, seconds_per_step),
    )
    reference = float(sc.reference_seconds)
    return Derived(
        kappa=kappa, reference_batch=reference, global_batch=kappa * reference,
        global_batch_seconds=global_batch(float(cfg.data.max_batch_seconds), world_size, accum_steps),
        seconds_per_step=seconds_per_step, world_size=world_size, accum_steps=accum_steps,
        optimizer=optimizer, optimizer_rule=rule, ema_rule=str(sc.ema_rule),
        lr=eff.lr, betas=eff.betas, eps=eff.eps, weight_decay=eff.weight_decay,
        momentum=eff.momentum, rho=rho, steps=steps, clock=clock,
    )


def run_clock(cfg: Any, world_size: int, accum_steps: int | None = None) -> DataClock:
    """The run's data hours <-> steps conversion: one stage per ``scaling.progressive`` entry,
    else one stage at ``accum_steps`` (default ``train.accum_steps``)."""
    reference_seconds = float(cfg.scaling.reference_seconds)
    stages = cfg.scaling.progressive
    if not stages:
        accum_steps = int(cfg.train.accum_steps) if accum_steps is None else accum_steps
        return DataClock.constant(_kappa_for(cfg, world_size, accum_steps) * reference_seconds)
    return DataClock(
        tuple(float(s.hours) for s in stages),
        tuple(_kappa_for(cfg, world_size, int(s.accum_steps)) * reference_seconds for s in stages),
    )


def _kappa_for(cfg: Any, world_size: int, accum_steps: int) -> float:
    return compute_kappa(float(cfg.data.max_batch_seconds), world_size, accum_steps,
                         float(cfg.scaling.reference_seconds))


def _pair(values: Sequence[float]) -> tuple[float, float]:
    first, second = (float(v) for v in values)
    return first, second


# ---------------------------------------------------------------------------------------------
# The schedule of a run: every time-dependent value at any optimizer step


@dataclass(frozen=True)
class SchedulePoint:
    """What optimizer step ``step`` runs with."""

    step: int
    """0-based global optimizer step."""
    hours: float
    """Data hours seen before this step."""
    stage: int
    """Progressive stage (0 without stages)."""
    values: Derived
    """The stage's kappa, accumulation and effective hyper-parameters (``lr`` is the peak)."""
    lr: float
    """This step's learning rate: the stage's peak times the schedule's factor."""
    pl_active: bool
    """Inside the pseudo-label phase (when pseudo-labels are enabled)."""
    specaug_active: bool
    """SpecAugment is on."""


class Schedule:
    """One run's schedule: for any optimizer step, every value that depends on where the run is.

    Pure: built from the config and the world size, it holds no training state, so the trainer,
    the scaling report, a resume on another GPU count and the tests all ask the same object.
    Every point is a position in data hours (see the module docstring), converted to steps by
    the run's :class:`DataClock`.
    """

    def __init__(self, cfg: Any, world_size: int) -> None:
        self.world_size = world_size
        self.clock = run_clock(cfg, world_size)
        stage_accum = [int(s.accum_steps) for s in cfg.scaling.progressive] or [int(cfg.train.accum_steps)]
        self.stages = tuple(derive(cfg, world_size, accum) for accum in stage_accum)
        """Derived values of each progressive stage (one without stages)."""
        self.steps = self.stages[0].steps
        """Every schedule point as a step index (the same in every stage: one clock)."""
        self.pl_enabled = bool(cfg.pl.enabled)
        self._decay = str(cfg.schedule.decay)
        self._step_factor = float(cfg.schedule.step_factor)
        self._final_lr_ratio = float(cfg.schedule.final_lr_ratio)
        self._warmup_hours = float(cfg.schedule.warmup_hours)
        self._decay_start_hours = max(float(cfg.schedule.decay_start_hours), self._warmup_hours)
        self._boundaries_hours = tuple(float(h) for h in cfg.schedule.step_boundaries_hours)
        self._total_hours = float(cfg.schedule.total_hours)
        self.eval_every_hours = float(cfg.train.eval_every_hours)
        self.checkpoint_every_hours = float(cfg.train.checkpoint_every_hours)
        stop_hours = float(cfg.train.stop_hours)
        self.stop_step = min(self.clock.steps_at(stop_hours), self.steps.total) if stop_hours else self.steps.total
        """The step this invocation stops at: ``train.stop_hours`` or the end of training."""

    def hours_at(self, step: int) -> float:
        """Data hours seen after ``step`` optimizer steps."""
        return self.clock.hours_at(step)

    def steps_at(self, hours: float) -> int:
        """Optimizer steps after which ``hours`` data hours have been seen (rounded up)."""
        return self.clock.steps_at(hours)

    def lr_at(self, step: int, peak: float) -> float:
        """The lr of step ``step`` for a peak of ``peak``, as a function of data hours.

        Warm-up is linear in the data seen by the end of the step (the first step already
        moves); the decay is read at the data seen before it. With progressive stages a step
        covers more data later on, and the lr follows the data, not the step count (the
        paper's progressive scaling: every schedule in data seen).
        """
        end = self.hours_at(step + 1)
        if end < self._warmup_hours * (1 - 1e-9):
            return peak * end / self._warmup_hours
        hours = self.hours_at(step)
        if self._decay == "step":
            return peak * self._step_factor ** sum(hours >= b * (1 - 1e-9) for b in self._boundaries_hours)
        if self._decay == "constant" or hours < self._decay_start_hours * (1 - 1e-9):
            return peak
        span = self._total_hours - self._decay_start_hours
        progress = min(1.0, max(hours - self._decay_start_hours, 0.0) / span) if span > 0 else 1.0
        floor = self._final_lr_ratio
        if self._decay == "cosine":
            return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
        return peak * (1 - (1 - floor) * progress)  # linear

    def at(self, step: int) -> SchedulePoint:
        """Everything optimizer step ``step`` runs with."""
        stage = self.clock.stage_at_step(step)
        values = self.stages[stage]
        return SchedulePoint(
            step=step, hours=self.hours_at(step), stage=stage, values=values,
            lr=self.lr_at(step, values.lr),
            pl_active=self.pl_enabled and step >= self.steps.pl_start,
            specaug_active=step >= self.steps.specaug_start,
        )

    def eval_due(self, step: int) -> bool:
        """A dev evaluation is due once ``step`` steps are done (a multiple of
        ``train.eval_every_hours`` was crossed by the last one)."""
        return self._crossed(step, self.eval_every_hours)

    def checkpoint_due(self, step: int) -> bool:
        """A periodic checkpoint is due once ``step`` steps are done."""
        return self._crossed(step, self.checkpoint_every_hours)

    def _crossed(self, step: int, every: float) -> bool:
        if every <= 0 or step <= 0:
            return False
        return _marks_reached(self.hours_at(step), every) > _marks_reached(self.hours_at(step - 1), every)

    def resume_step(self, saved: Schedule, step: int) -> int:
        """The step of this schedule at the data hours where ``saved``'s step ``step`` stood: a
        checkpoint written at another world size or accumulation continues at the same data."""
        if saved.clock == self.clock:
            return step
        return self.steps_at(saved.hours_at(step))


def _marks_reached(hours: float, every: float) -> int:
    """Multiples of ``every`` reached by ``hours``, forgiving float noise: 9 steps of 15 s are
    0.0375 h, 3 x 0.0125 h a hair more."""
    return math.floor(hours / every * (1 + 1e-9) + 1e-12)


# ---------------------------------------------------------------------------------------------
# Progressive stage changes: what the trainer updates in place


def optimizer_state_scales(before: Derived, after: Derived) -> dict[str, float]:
    """Factors for per-parameter optimizer state when kappa changes mid-run.

    The rules assume state accumulated at the current batch size. At a stage change the state
    carried over is rescaled to what a run at the new kappa would hold (noise-dominated regime):
    Adam's second moment ~ sigma^2 / B scales by kappa_before / kappa_after; Adagrad's sum of
    squares by (kappa_before / kappa_after)^2; SGD's momentum buffer, a sum with steady state
    g / (1 - mu), by (1 - mu_before) / (1 - mu_after). Adam's first moment is an average of
    gradients and needs no change.
    """
    if before.optimizer_rule != after.optimizer_rule:
        raise ValueError("the optimizer rule must not change between stages: "
                         f"{before.optimizer_rule} -> {after.optimizer_rule}")
    ratio = before.kappa / after.kappa
    if after.optimizer_rule == "adam":
        return {"exp_avg_sq": ratio}
    if after.optimizer_rule == "adagrad":
        return {"sum": ratio**2}
    if after.optimizer_rule == "sgd" and after.momentum > 0:
        return {"momentum_buffer": (1 - before.momentum) / (1 - after.momentum)}
    return {}


# ---------------------------------------------------------------------------------------------
# Reports


def scaling_report(schedule: Schedule, cfg: Any) -> str:
    """The table printed at train start: reference vs actual batch, kappa, base vs effective
    values (per progressive stage), and every schedule point in data hours and steps."""
    d, sched = schedule.stages[0], cfg.schedule
    lines = [
        f"scaling: {d.world_size} rank(s) x {d.accum_steps} micro-batch(es) x "
        f"{cfg.data.max_batch_seconds:g} s = {d.global_batch_seconds:g} s of padded audio per step",
        f"reference {d.reference_batch:g} s per step, actual {d.global_batch:g} s: "
        f"kappa = {d.kappa:.4g}; optimizer {d.optimizer}, rule {d.optimizer_rule}; EMA rule {d.ema_rule}",
    ]
    rows = [("lr (peak)", cfg.optim.lr, d.lr)]
    if d.optimizer in ("adam", "adamw"):
        rows.append(("betas", tuple(cfg.optim.betas), d.betas))
    if d.optimizer == "sgd":
        rows.append(("momentum", cfg.optim.momentum, d.momentum))
    else:
        rows.append(("eps", cfg.optim.eps, d.eps))
    rows += [("weight_decay", cfg.optim.weight_decay, d.weight_decay), ("ema rho", cfg.ema.rho, d.rho)]
    lines += _table(("hyper-parameter", "base (kappa=1)", "effective"),
                    [(name, _fmt(base), _fmt(eff)) for name, base, eff in rows])

    steps = schedule.steps
    points = [("warm-up end", sched.warmup_hours, steps.warmup),
              ("decay start", max(sched.decay_start_hours, sched.warmup_hours), steps.decay_start)]
    boundaries = zip(sched.step_boundaries_hours, steps.decay_boundaries, strict=True)
    points += [(f"lr step {i + 1}", hours, n) for i, (hours, n) in enumerate(boundaries)]
    points += [("pseudo-label start", cfg.pl.start_hours, steps.pl_start),
               ("SpecAugment start", cfg.specaug.start_hours, steps.specaug_start),
               ("total", sched.total_hours, steps.total)]
    if cfg.train.stop_hours:
        points.append(("this invocation stops at", cfg.train.stop_hours, schedule.stop_step))
    points += [("eval every", cfg.train.eval_every_hours, steps.eval_every),
               ("checkpoint every", cfg.train.checkpoint_every_hours, steps.checkpoint_every)]
    lines += _table(("schedule", "data hours", "steps"), [(name, f"{h:g}", str(n)) for name, h, n in points])

    if len(schedule.stages) > 1:
        clock = schedule.clock
        rows = [(str(k), f"{h:g}", str(clock.steps_at(h)), str(v.accum_steps), f"{v.kappa:.4g}",
                 _fmt(v.lr), _fmt(v.betas) if v.optimizer in ("adam", "adamw") else "-", _fmt(v.rho))
                for k, (h, v) in enumerate(zip(clock.stage_hours, schedule.stages, strict=True))]
        lines += _table(("stage", "from data hours", "from step", "accum", "kappa", "lr (peak)",
                         "betas", "rho"), rows)
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ", ".join(_fmt(v) for v in value)
    return f"{float(value):.6g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"
    return ["", line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)]


def calculate(*, reference_seconds: float, batch_seconds: float, world_size: int = 1,
              accum_steps: int = 1, optimizer: str, lr: float, betas: tuple[float, float] = (0.9, 0.999),
              eps: float = 1e-8, weight_decay: float = 0.0, momentum: float = 0.0, rho: float,
              rule: str = "auto", ema_rule: str = "power", hours: Sequence[float] = (),
              on_invalid: str = "warn") -> dict[str, Any]:
    """The ``asr scale`` calculator on plain floats: kappa, effective values, steps per hours mark."""
    base = OptimizerParams(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, momentum=momentum)
    kappa = compute_kappa(batch_seconds, world_size, accum_steps, reference_seconds)
    eff = scale_optimizer(base, kappa, optimizer, rule, on_invalid)
    seconds_per_step = kappa * reference_seconds
    return {
        "kappa": kappa,
        "reference_seconds": reference_seconds,
        "global_batch_seconds": global_batch(batch_seconds, world_size, accum_steps),
        "optimizer": optimizer,
        "rule": resolve_rule(optimizer, rule),
        "ema_rule": ema_rule,
        "lr": eff.lr,
        "betas": list(eff.betas),
        "eps": eff.eps,
        "weight_decay": eff.weight_decay,
        "momentum": eff.momentum,
        "rho": scale_ema(rho, kappa, ema_rule, on_invalid),
        "hours": list(hours),
        "steps": [steps_for_hours(h, seconds_per_step) for h in hours],
        "base": {**asdict(base), "betas": list(base.betas), "rho": rho},
    }


def format_calculation(result: dict[str, Any], as_json: bool = False) -> str:
    """``asr scale`` output: one JSON object, or the tables."""
    if as_json:
        return json.dumps(result)
    r, base = result, result["base"]
    lines = [f"global batch {r['global_batch_seconds']:g} s per step, reference "
             f"{r['reference_seconds']:g} s: kappa = {r['kappa']:.4g} (optimizer {r['optimizer']}, "
             f"rule {r['rule']}, EMA rule {r['ema_rule']})"]
    names = ("lr", "betas", "eps", "weight_decay", "momentum", "rho")
    lines += _table(("hyper-parameter", "base (kappa=1)", "effective"),
                    [(n, _fmt(base[n]), _fmt(r[n])) for n in names])
    if r["hours"]:
        marks = zip(r["hours"], r["steps"], strict=True)
        lines += _table(("hours", "steps"), [(f"{h:g}", str(n)) for h, n in marks])
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def _check_kappa(kappa: float) -> None:
    _require(kappa > 0 and math.isfinite(kappa), "kappa", kappa, "a positive, finite batch ratio")


def _require(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise ValueError(f"{name}: got {value!r}, expected {expected}")

