"""The scaling rules: one step at kappa does what kappa reference steps do, measured in data seen.

The dynamics tests follow the noisy parabola of Busbridge et al. 2023 (Sec. 3 and the toy
appendix): L(theta) = a * theta^2 / 2 with gradient noise of variance (b * (a*theta)^2 + c) / B.
Runs are compared at matched data seen (reference step s <-> step s / kappa), on the EMA's mean
and variance, relative to the reference run's largest value.
"""

import json
import math
import warnings
from dataclasses import replace

import pytest
import torch
from torch import nn

from asr.cli import main
from asr.config import load_config
from asr.ema import EMATeacher
from asr.optim import apply_values, build_optimizer, optimizer_step
from asr.scaling import (
    DataClock,
    OptimizerParams,
    ScalingWarning,
    Schedule,
    compute_kappa,
    derive,
    hours_for_steps,
    optimizer_state_scales,
    scale_ema,
    scale_optimizer,
    scaling_report,
    steps_for_hours,
)

# ---------------------------------------------------------------------------------------------
# kappa


@pytest.mark.parametrize(
    ("per_rank", "world_size", "accum", "reference", "kappa"),
    [
        (60.0, 1, 1, 120.0, 0.5),
        (60.0, 2, 1, 120.0, 1.0),
        (60.0, 8, 2, 120.0, 8.0),
        (30.0, 64, 4, 120.0, 64.0),
    ],
)
def test_kappa_counts_every_rank_and_micro_batch(per_rank, world_size, accum, reference, kappa):
    assert compute_kappa(per_rank, world_size, accum, reference) == kappa


def test_kappa_from_config_counts_padded_seconds():
    seconds = load_config(None, ["data.max_batch_seconds=60", "scaling.reference_seconds=120"])
    assert derive(seconds, world_size=8, accum_steps=2).kappa == 8
    assert derive(seconds, world_size=8, accum_steps=2).global_batch_seconds == 960


def test_config_rules_none_keep_base_values_and_on_invalid_error_refuses_at_derive():
    batch = ["data.max_batch_seconds=60", "scaling.reference_seconds=120"]
    unscaled = derive(load_config(None, [*batch, "scaling.optimizer_rule=none", "scaling.ema_rule=none"]), 16)
    assert (unscaled.kappa, unscaled.lr, unscaled.betas, unscaled.eps, unscaled.rho) == (8, 1e-3, (0.9, 0.98), 1e-8, 0.999)
    strict = load_config(None, [*batch, "scaling.on_invalid=error"])
    with pytest.raises(ValueError, match=r"optim\.betas\[0\]=0\.9 scaled at kappa=16 .*on_invalid=error"):
        derive(strict, world_size=32)


# ---------------------------------------------------------------------------------------------
# The rules as formulas


def test_rho_to_kappa_equals_kappa_updates_towards_a_frozen_target():
    rho, target, start = 0.999, 3.0, -1.0
    for kappa in (1, 2, 4, 16, 256):
        ema = start
        for _ in range(kappa):
            ema = rho * ema + (1 - rho) * target
        one = scale_ema(rho, kappa)
        assert one * start + (1 - one) * target == pytest.approx(ema, rel=1e-12)


@pytest.mark.parametrize("rho", [0.9, 0.99, 0.9999])
def test_rho_to_kappa_composes_over_doublings(rho):
    doubled_twice = scale_ema(scale_ema(rho, 2), 2)
    assert doubled_twice == pytest.approx(scale_ema(rho, 4), rel=1e-12)
    halved = scale_ema(rho, 0.5)
    assert scale_ema(halved, 2) == pytest.approx(rho, rel=1e-12)


@pytest.mark.parametrize(
    ("optimizer", "rule", "kappa", "expected"),
    [
        ("sgd", "auto", 4, dict(lr=0.4, momentum=0.0, weight_decay=1e-4)),
        ("sgd", "auto", 0.25, dict(lr=0.025, momentum=0.0)),
        ("adam", "auto", 4, dict(lr=2e-3, betas=(0.6, 0.96), eps=5e-9, weight_decay=1e-4)),
        ("adam", "auto", 0.25, dict(lr=5e-4, betas=(0.975, 0.9975), eps=2e-8)),
        ("adagrad", "auto", 4, dict(lr=1e-3, eps=2.5e-9, weight_decay=1e-4)),
        ("adam", "sgd", 4, dict(lr=4e-3, betas=(0.9, 0.99), eps=1e-8)),
        ("adam", "none", 4, dict(lr=1e-3, betas=(0.9, 0.99), eps=1e-8)),
    ],
)
def test_optimizer_rule_table(optimizer, rule, kappa, expected):
    base_lr = 0.1 if optimizer == "sgd" else 1e-3
    base = OptimizerParams(lr=base_lr, betas=(0.9, 0.99), eps=1e-8, weight_decay=1e-4)
    got = scale_optimizer(base, kappa, optimizer, rule)
    for key, value in expected.items():
        assert getattr(got, key) == pytest.approx(value, rel=1e-9), key


@pytest.mark.parametrize("kappa", [0.25, 2, 4, 16])
def test_sgd_momentum_keeps_its_timescale_and_effective_step_in_data(kappa):
    base = OptimizerParams(lr=0.01, momentum=0.9)
    got = scale_optimizer(base, kappa, "sgd")
    assert got.momentum == pytest.approx(0.9**kappa)
    # torch's buffer sums gradients: its steady-state step lr / (1 - mu) grows linearly in kappa.
    assert got.lr / (1 - got.momentum) == pytest.approx(kappa * base.lr / (1 - base.momentum))


@pytest.mark.parametrize("kappa", [0.25, 2, 8, 64])
def test_adamw_decoupled_decay_shrinks_the_same_per_unit_of_data(kappa):
    base = OptimizerParams(lr=1e-3, betas=(0.99, 0.999), weight_decay=0.05)
    got = scale_optimizer(base, kappa, "adamw")
    assert 1 - got.lr * got.weight_decay == pytest.approx((1 - base.lr * base.weight_decay) ** kappa, rel=1e-12)
    # First order: lr' * wd' = kappa * lr * wd, i.e. wd' = sqrt(kappa) * wd under Adam's sqrt lr rule.
    assert got.weight_decay == pytest.approx(math.sqrt(kappa) * base.weight_decay, rel=1e-3 * kappa)


def test_coupled_l2_weight_decay_is_not_rescaled():
    base = OptimizerParams(lr=1e-3, weight_decay=0.05)
    for optimizer in ("sgd", "adam", "adagrad"):
        assert scale_optimizer(base, 8, optimizer).weight_decay == 0.05


# ---------------------------------------------------------------------------------------------
# Invalid values: warn and clamp, or refuse


def adam_beta(index: int, betas: tuple[float, float], kappa: float):
    return lambda mode: scale_optimizer(OptimizerParams(lr=1e-3, betas=betas), kappa, "adam",
                                        on_invalid=mode).betas[index]


def adagrad_eps(eps: float, kappa: float):
    return lambda mode: scale_optimizer(OptimizerParams(lr=1e-3, eps=eps), kappa, "adagrad", on_invalid=mode).eps


def ema_rho(rho: float, kappa: float):
    return lambda mode: scale_ema(rho, kappa, on_invalid=mode)


OUT_OF_RANGE = {  # name: (scaled value as a function of on_invalid, clamped value, message)
    "beta-below-zero": (adam_beta(0, (0.9, 0.98), 16), 0.0,
                        r"optim\.betas\[0\]=0\.9 scaled at kappa=16 .* kappa <= 1 / \(1 - beta\) = 10"),
    "beta-rounds-to-one": (adam_beta(1, (0.9, 0.999), 1e-15), math.nextafter(1.0, 0.0),
                           r"optim\.betas\[1\]=0\.999 .*rounds to 1"),
    "eps-underflow": (adagrad_eps(1e-300, 1e30), 2.2250738585072014e-308, r"optim\.eps=1e-300 .*underflowed"),
    "rho-underflow": (ema_rho(0.5, 1e4), 0.0, r"ema\.rho=0\.5 scaled at kappa=10000 .*underflows"),
    "rho-rounds-to-one": (ema_rho(1 - 1e-12, 1e-6), math.nextafter(1.0, 0.0), r"ema\.rho=0\.999999999999 .*never move"),
}


@pytest.mark.parametrize(("call", "clamped", "message"), OUT_OF_RANGE.values(), ids=OUT_OF_RANGE.keys())
def test_out_of_range_values_warn_and_clamp_or_refuse(call, clamped, message):
    with pytest.warns(ScalingWarning, match=message):
        assert call("warn") == clamped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=message):
            call("error")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: scale_optimizer(OptimizerParams(lr=0.0), 2, "sgd"), r"optim\.lr: got 0\.0"),
        (lambda: scale_optimizer(OptimizerParams(lr=-1e-3), 2, "adam"), r"optim\.lr: got -0\.001"),
        (lambda: scale_optimizer(OptimizerParams(lr=1e-3), 0, "sgd"), r"kappa: got 0"),
        (lambda: scale_optimizer(OptimizerParams(lr=1e-3), math.inf, "sgd"), r"kappa: got inf"),
        (lambda: scale_optimizer(OptimizerParams(lr=1e-3), 2, "lamb"), r"optimizer: got 'lamb'"),
        (lambda: scale_optimizer(OptimizerParams(lr=1e-3), 2, "adam", rule="lars"), r"optimizer rule: got 'lars'"),
        (lambda: scale_optimizer(OptimizerParams(lr=1.0, weight_decay=2.0), 2, "adamw"), r"lr \* weight_decay < 1"),
        (lambda: scale_ema(1.0, 2), r"ema\.rho: got 1\.0"),
        (lambda: compute_kappa(60, 0, 1, 120), r"world_size: got 0"),
        (lambda: steps_for_hours(-1, 60), r"hours: got -1"),
    ],
)
def test_impossible_inputs_are_refused_naming_the_value(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------------------------------------
# Schedules in data units


@pytest.mark.parametrize(
    ("hours", "seconds_per_step", "steps"),
    [
        (0.0, 120.0, 0),
        (1.0, 120.0, 30),
        (0.1, 36.0, 10),  # 10.000000000000002 in floats: still 10
        (1.0, 7.0, 515),  # 514.29 rounds up: the phase never starts early
        (1e-6, 960.0, 1),  # any positive duration lasts a step
    ],
)
def test_hours_to_steps_rounds_up(hours, seconds_per_step, steps):
    assert steps_for_hours(hours, seconds_per_step) == steps


@pytest.mark.parametrize("seconds_per_step", [7.0, 120.0, 960.0, 1e4 / 3])
def test_hours_steps_round_trip(seconds_per_step):
    for steps in (0, 1, 17, 1000, 123457):
        assert steps_for_hours(hours_for_steps(steps, seconds_per_step), seconds_per_step) == steps
    for hours in (0.01, 0.5, 2.0, 1000.0):
        steps = steps_for_hours(hours, seconds_per_step)
        assert hours <= hours_for_steps(steps, seconds_per_step) < hours + seconds_per_step / 3600


def test_schedule_steps_divide_by_kappa():
    cfg = load_config(None, ["schedule.total_hours=100", "schedule.warmup_hours=1", "pl.start_hours=10",
                             "specaug.start_hours=2", "schedule.decay=step", "schedule.step_boundaries_hours=[50,75]",
                             "data.max_batch_seconds=60", "scaling.reference_seconds=120"])
    one, eight = derive(cfg, world_size=2), derive(cfg, world_size=16)
    assert (one.kappa, eight.kappa) == (1, 8)
    assert one.steps.total == 3000 and eight.steps.total == 375
    assert (one.steps.warmup, eight.steps.warmup) == (30, 4)  # 3.75 rounds up
    assert (one.steps.pl_start, eight.steps.pl_start) == (300, 38)
    assert (one.steps.specaug_start, eight.steps.specaug_start) == (60, 8)
    assert one.steps.decay_boundaries == (1500, 2250) and eight.steps.decay_boundaries == (188, 282)


# ---------------------------------------------------------------------------------------------
# Progressive scaling


PROGRESSIVE = [
    "data.max_batch_seconds=60", "scaling.reference_seconds=120", "schedule.total_hours=10",
    "scaling.progressive=[{hours: 0, accum_steps: 1}, {hours: 1, accum_steps: 2}, {hours: 3, accum_steps: 4}]",
]


@pytest.mark.parametrize(
    ("hours_seen", "kappa"),
    [(0.0, 2), (0.99, 2), (1.0, 4), (2.5, 4), (3.0, 8), (9.0, 8)],
)
def test_progressive_stage_kappa_over_hours_seen(hours_seen, kappa):
    cfg = load_config(None, PROGRESSIVE)
    schedule = Schedule(cfg, world_size=4)
    derived = schedule.stages[schedule.clock.stage_at_hours(hours_seen)]
    assert derived.kappa == kappa
    assert derived.rho == pytest.approx(cfg.ema.rho**kappa)
    assert derived.lr == pytest.approx(math.sqrt(kappa) * cfg.optim.lr)


def test_progressive_hours_to_steps_is_piecewise():
    # 4 ranks x 60 s: 240 s a step (15 a hour), then 480 s (7.5 a hour), then 960 s (3.75 a hour).
    clock = derive(load_config(None, PROGRESSIVE), world_size=4).clock
    table = [(0.0, 0), (1.0, 15), (2.0, 23), (3.0, 30), (5.0, 38), (10.0, 57)]
    for hours, steps in table:
        assert clock.steps_at(hours) == steps, hours
    assert (clock.hours_at(15), clock.hours_at(30), clock.hours_at(34)) == (1.0, 3.0, pytest.approx(3 + 4 * 960 / 3600))
    assert [clock.stage_at_step(n) for n in (0, 14, 15, 29, 30)] == [0, 0, 1, 1, 2]


def test_progressive_stage_starts_at_the_first_step_boundary_after_its_mark():
    clock = DataClock(stage_hours=(0.0, 1.0), seconds_per_step=(7.0, 700.0))
    start = clock.steps_at(1.0)  # ceil(3600 / 7) = 515 steps: 1.0014 h
    assert start == 515 and clock.hours_at(start) == pytest.approx(515 * 7 / 3600)
    assert clock.steps_at(clock.hours_at(start) + 700 / 3600) == start + 1
    for steps in (0, 514, 515, 516, 600):
        assert clock.steps_at(clock.hours_at(steps)) == steps


def test_stage_change_rescales_the_optimizer_state_the_rules_depend_on():
    def stages(*overrides: str) -> tuple:
        return Schedule(load_config(None, [*PROGRESSIVE, *overrides]), 4).stages

    first, second, _ = stages("optim.name=adamw", "optim.weight_decay=0.01")
    assert second.betas == pytest.approx((1 - 4 * 0.1, 1 - 4 * 0.02))
    assert optimizer_state_scales(first, second) == {"exp_avg_sq": 0.5}
    first, second, _ = stages("optim.name=sgd", "optim.momentum=0.9")
    assert optimizer_state_scales(first, second) == {"momentum_buffer": pytest.approx((1 - 0.9**2) / (1 - 0.9**4))}
    first, _, third = stages("optim.name=adagrad")
    assert optimizer_state_scales(first, third) == {"sum": 1 / 16}


# ---------------------------------------------------------------------------------------------
# The report and the calculator


def test_scaling_report_shows_base_and_effective_values_and_schedule_steps():
    cfg = load_config(None, ["data.max_batch_seconds=60", "scaling.reference_seconds=120", "ema.rho=0.999"])
    report = scaling_report(Schedule(cfg, world_size=16), cfg)
    derived = derive(cfg, world_size=8, accum_steps=2)
    assert "kappa = 8" in report
    assert "960 s of padded audio per step" in report
    assert "| ema rho         | 0.999          | 0.992028    |" in report
    assert "| betas           | 0.9, 0.98      | 0.2, 0.84   |" in report
    assert "| total              | 10         | 38    |" in report
    assert json.loads(json.dumps(derived.to_dict()))["steps"]["total"] == 38  # plain types, for checkpoints


def test_asr_scale_json(capsys):
    argv = ["scale", "--reference-seconds", "120", "--batch-seconds", "60", "--world-size", "8", "--accum", "2",
            "--optimizer", "adam", "--lr", "1e-3", "--betas", "0.9,0.98", "--eps", "1e-8", "--rho", "0.999",
            "--hours", "0.5", "2", "10", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kappa"] == 8
    assert out["lr"] == pytest.approx(math.sqrt(8) * 1e-3)
    assert out["betas"] == pytest.approx([0.2, 0.84])
    assert out["eps"] == pytest.approx(1e-8 / math.sqrt(8))
    assert out["weight_decay"] == 0
    assert out["rho"] == pytest.approx(0.999**8)
    assert out["steps"] == [2, 8, 38]


def test_asr_scale_table_warns_on_stderr_and_refuses_with_on_invalid_error(capsys):
    argv = ["scale", "--reference-seconds", "120", "--batch-seconds", "60", "--world-size", "64",
            "--optimizer", "adam", "--lr", "1e-3", "--rho", "0.999"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "kappa = 32" in captured.out and "| betas" in captured.out
    assert "asr scale: warning: optim.betas[0]=0.9 scaled at kappa=32" in captured.err
    assert main([*argv, "--on-invalid", "error"]) == 2
    assert "asr scale: error: optim.betas[0]=0.9" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Dynamics: the noisy parabola, exactly (moment recursions)


A, B_NOISE, C_NOISE, BATCH = 1.0, 0.5, 1.0, 1.0  # curvature, multiplicative and additive noise, batch
LR, RHO, REFERENCE_STEPS = 0.01, 0.99, 400  # 4 relaxation times 1 / (lr * a); EMA horizon 100 steps
KAPPAS = [0.25, 0.5, 2, 4, 8]
COMPARE_EVERY = 8  # reference steps between comparisons: a whole number of steps at every kappa


def parabola_ema_moments(lr: float, rho: float, batch: float, steps: int) -> dict[int, tuple[float, float]]:
    """Exact (mean, variance) of the EMA after each SGD step (keyed by step), theta and EMA at 1.

    x' = (1 - lr*a) x - lr * sigma(x) * xi with sigma^2 = (b (a x)^2 + c) / B, z' = rho z + (1 - rho) x'.
    The five moments E[x], E[x^2], E[xz], E[z], E[z^2] close under this update.
    """
    x, xx, xz, z, zz = 1.0, 1.0, 1.0, 1.0, 1.0
    q = 1 - lr * A
    out = {}
    for step in range(1, steps + 1):
        x_next = q * x
        xx_next = q * q * xx + lr * lr * (B_NOISE * A * A * xx + C_NOISE) / batch
        x_next_z = q * xz  # the noise is independent of z and has mean 0
        z, zz, xz = (rho * z + (1 - rho) * x_next,
                     rho * rho * zz + 2 * rho * (1 - rho) * x_next_z + (1 - rho) ** 2 * xx_next,
                     rho * x_next_z + (1 - rho) * xx_next)
        x, xx = x_next, xx_next
        out[step] = (z, zz - z * z)
    return out


def drift_from_reference(run, kappa, reference) -> tuple[float, float]:
    """Largest |mean| and |variance| gap at matched data, relative to the reference's largest value."""
    mean_scale = max(abs(m) for m, _ in reference.values())
    var_scale = max(v for _, v in reference.values())
    mean_gap = var_gap = 0.0
    for s in range(COMPARE_EVERY, REFERENCE_STEPS + 1, COMPARE_EVERY):
        (m_ref, v_ref), (m, v) = reference[s], run[round(s / kappa)]
        mean_gap, var_gap = max(mean_gap, abs(m - m_ref) / mean_scale), max(var_gap, abs(v - v_ref) / var_scale)
    return mean_gap, var_gap


def scaled_sgd_ema(kappa: float, ema_rule: str) -> tuple[float, float]:
    """(lr, rho) at kappa from asr.scaling: the SGD rule with the EMA rule or rho held fixed."""
    return scale_optimizer(OptimizerParams(lr=LR), kappa, "sgd").lr, scale_ema(RHO, kappa, ema_rule)


@pytest.mark.parametrize("kappa", KAPPAS)
def test_ema_scaling_rule_keeps_the_noisy_parabola_ema_moments(kappa):
    reference = parabola_ema_moments(LR, RHO, BATCH, REFERENCE_STEPS)
    steps = round(REFERENCE_STEPS / kappa)
    with_rule = parabola_ema_moments(*scaled_sgd_ema(kappa, "power"), BATCH * kappa, steps)
    rho_fixed = parabola_ema_moments(*scaled_sgd_ema(kappa, "none"), BATCH * kappa, steps)

    mean_gap, var_gap = drift_from_reference(with_rule, kappa, reference)
    assert mean_gap < 0.025 and var_gap < 0.06  # O(kappa * lr) discretisation, worst at kappa=8
    fixed_mean_gap, fixed_var_gap = drift_from_reference(rho_fixed, kappa, reference)
    assert fixed_mean_gap > 10 * mean_gap and fixed_var_gap > 10 * var_gap


# ---------------------------------------------------------------------------------------------
# Dynamics: the same parabola sampled with the project's code (torch SGD + EMATeacher)


class Parabolas(nn.Module):
    """Independent parabolas, one per element: theta has one coordinate per run."""

    def __init__(self, runs: int) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.ones(runs))


def parabola_config(kappa: float, ema_rule: str):
    """The trainer's config of the parabola run at ``kappa``: SGD at LR and the teacher at RHO at
    the reference batch, constant lr, kappa from the batch (one rank, no accumulation)."""
    reference_seconds = 60.0
    return load_config(None, [
        "optim.name=sgd", f"optim.lr={LR}", "optim.momentum=0", "optim.grad_clip=0", f"ema.rho={RHO}",
        f"scaling.ema_rule={ema_rule}", f"scaling.reference_seconds={reference_seconds}",
        f"data.max_batch_seconds={kappa * reference_seconds}", f"data.max_duration={kappa * reference_seconds}",
        "schedule.total_hours=1000", "schedule.warmup_hours=0", "schedule.decay=constant",
    ])


def sample_parabola_ema(kappa: float, ema_rule: str, steps: int, every: int, runs: int = 16384,
                        seed: int = 0) -> dict[int, tuple[float, float]]:
    """Sampled (mean, variance) of the EMA teacher every ``every`` steps (keyed by step), through
    the trainer's own path: its config, the schedule's values at each step, the optimizer built
    and updated by asr.optim, and the EMA teacher updated with the schedule's rho."""
    cfg = parabola_config(kappa, ema_rule)
    schedule = Schedule(cfg, world_size=1)
    generator = torch.Generator().manual_seed(seed)
    model = Parabolas(runs)
    optimizer = build_optimizer(cfg.optim.name, model.parameters(), schedule.at(0).values, torch.device("cpu"))
    teacher = EMATeacher(model)
    batch = BATCH * schedule.at(0).values.kappa
    finite = torch.zeros(())
    out = {}
    for step in range(1, steps + 1):
        point = schedule.at(step - 1)
        apply_values(optimizer, point.values, point.lr)
        theta = model.theta.detach()
        sigma = torch.sqrt((B_NOISE * (A * theta) ** 2 + C_NOISE) / batch)
        model.theta.grad = A * theta + sigma * torch.randn(runs, generator=generator)
        optimizer_step(optimizer, finite)
        teacher.update(model, point.values.rho)
        if step % every == 0:
            ema = teacher.module.theta
            out[step] = (ema.mean().item(), ema.var().item())
    return out


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("kappa", KAPPAS)
def test_ema_scaling_rule_with_torch_sgd_and_the_ema_teacher(kappa):
    reference = parabola_ema_moments(LR, RHO, BATCH, REFERENCE_STEPS)  # exact: no sampling error
    steps = round(REFERENCE_STEPS / kappa)
    every = round(COMPARE_EVERY / kappa)
    with_rule = sample_parabola_ema(kappa, "power", steps, every)
    rho_fixed = sample_parabola_ema(kappa, "none", steps, every)

    mean_gap, var_gap = drift_from_reference(with_rule, kappa, reference)
    assert mean_gap < 0.03 and var_gap < 0.08  # the exact bound plus ~1-3% sampling error
    fixed_mean_gap, fixed_var_gap = drift_from_reference(rho_fixed, kappa, reference)
    assert fixed_mean_gap > 0.1 and fixed_var_gap > 0.3


def sample_quadratic(optimizer_name: str, params: OptimizerParams, batch: float, steps: int, every: int,
                     noise_variance: float = 100.0, runs: int = 16384, seed: int = 0) -> list[tuple[float, float]]:
    """(mean, variance) of theta every ``every`` steps on a quadratic dominated by gradient noise.

    The SDE rules of adaptive optimizers hold where noise dominates the gradient (Malladi et al.
    2022); here the noise std is 10 against a gradient of at most 1.
    """
    generator = torch.Generator().manual_seed(seed)
    theta = nn.Parameter(torch.ones(runs))
    if optimizer_name == "adam":
        optimizer = torch.optim.Adam([theta], lr=params.lr, betas=params.betas, eps=params.eps)
    elif optimizer_name == "adagrad":
        optimizer = torch.optim.Adagrad([theta], lr=params.lr, eps=params.eps)
    else:
        optimizer = torch.optim.SGD([theta], lr=params.lr, momentum=params.momentum)
    out = []
    for step in range(1, steps + 1):
        theta.grad = A * theta.detach() + math.sqrt(noise_variance / batch) * torch.randn(runs, generator=generator)
        optimizer.step()
        if step % every == 0:
            out.append((theta.mean().item(), theta.var().item()))
    return out


def trajectory_gap(run, reference) -> tuple[float, float]:
    mean_scale = max(abs(1 - m) for m, _ in reference)  # the distance travelled from theta = 1
    var_scale = max(v for _, v in reference)
    return (max(abs(m - r) for (m, _), (r, _) in zip(run, reference, strict=True)) / mean_scale,
            max(abs(v - r) for (_, v), (_, r) in zip(run, reference, strict=True)) / var_scale)


@pytest.mark.usefixtures("one_thread")
def test_adam_rule_keeps_the_noisy_quadratic_trajectory():
    # beta1's window (50 steps) is short of the relaxation time (sigma / (lr * a) ~ 330 steps) but
    # not negligible, so a beta1 left unscaled shows; beta2 averages stationary noise and does not.
    base, kappa = OptimizerParams(lr=0.03, betas=(0.98, 0.995), eps=1e-8), 4
    reference = sample_quadratic("adam", base, BATCH, REFERENCE_STEPS, every=kappa)
    scaled = scale_optimizer(base, kappa, "adam")
    variants = {"rule": scaled, "none": scale_optimizer(base, kappa, "adam", "none"),
                "sgd": scale_optimizer(base, kappa, "adam", "sgd"), "betas_unscaled": replace(scaled, betas=base.betas)}
    gaps = {name: trajectory_gap(sample_quadratic("adam", params, BATCH * kappa, REFERENCE_STEPS // kappa,
                                                  every=1, seed=1), reference)
            for name, params in variants.items()}

    assert gaps["rule"][0] < 0.05 and gaps["rule"][1] < 0.12
    for wrong in ("none", "sgd", "betas_unscaled"):
        assert gaps[wrong][1] > 0.3 and gaps[wrong][1] > 4 * gaps["rule"][1], wrong


@pytest.mark.usefixtures("one_thread")
def test_adagrad_rule_keeps_the_lr_and_divides_eps_by_kappa():
    base, kappa = OptimizerParams(lr=0.05, eps=1e-8), 4
    reference = sample_quadratic("adagrad", base, BATCH, REFERENCE_STEPS, every=kappa)
    chosen = sample_quadratic("adagrad", scale_optimizer(base, kappa, "adagrad"), BATCH * kappa,
                              REFERENCE_STEPS // kappa, every=1, seed=1)
    mean_gap, var_gap = trajectory_gap(chosen, reference)
    # The mean follows closely; the variance keeps part of the first steps' transient (see asr.scaling).
    assert mean_gap < 0.1 and var_gap < 0.35
    for rejected in ("adam", "sgd"):  # sqrt(kappa) * lr, and kappa * lr
        other = sample_quadratic("adagrad", scale_optimizer(base, kappa, "adagrad", rejected), BATCH * kappa,
                                 REFERENCE_STEPS // kappa, every=1, seed=1)
        other_mean_gap, other_var_gap = trajectory_gap(other, reference)
        assert other_mean_gap > 5 * mean_gap and other_var_gap > 1.0, rejected


@pytest.mark.usefixtures("one_thread")
def test_sgd_momentum_rule_keeps_the_noisy_quadratic_trajectory():
    base, kappa = OptimizerParams(lr=0.001, momentum=0.9), 4
    reference = sample_quadratic("sgd", base, BATCH, REFERENCE_STEPS, every=kappa, noise_variance=1.0)
    scaled = scale_optimizer(base, kappa, "sgd")
    naive = OptimizerParams(lr=kappa * base.lr, momentum=base.momentum**kappa)  # lr -> kappa*lr alone
    fixed_mu = OptimizerParams(lr=kappa * base.lr, momentum=base.momentum)  # momentum window grows in data
    gaps = {name: trajectory_gap(sample_quadratic("sgd", p, BATCH * kappa, REFERENCE_STEPS // kappa, every=1,
                                                  noise_variance=1.0, seed=1), reference)
            for name, p in (("rule", scaled), ("naive", naive), ("fixed_mu", fixed_mu))}
    assert gaps["rule"][0] < 0.05 and gaps["rule"][1] < 0.15
    assert gaps["naive"][0] > 0.3 and gaps["fixed_mu"][0] > 5 * gaps["rule"][0]


def _data_hours_lr_factor(start: float, end: float) -> float:
    """The schedule of the test below written in data hours only: warm-up to 2 h (read at the
    end of a step), constant to 4 h, cosine to 10 h with a floor of 0.1 (read at its start)."""
    if end < 2:
        return end / 2
    if start < 4:
        return 1.0
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (start - 4) / 6)))


def test_progressive_lr_follows_the_data_hours_schedule_at_every_step():
    """Stages at 1 h and 3 h double the batch twice, inside the warm-up and before the decay:
    at every step the lr is the stage's rule-scaled peak times the schedule at the data that
    step has seen, so it never jumps at a stage change."""
    cfg = load_config(None, [*PROGRESSIVE, "schedule.warmup_hours=2", "schedule.decay=cosine",
                             "schedule.decay_start_hours=4", "schedule.final_lr_ratio=0.1"])
    schedule = Schedule(cfg, world_size=4)
    factors = []
    for step in range(schedule.steps.total):
        point = schedule.at(step)
        start, end = schedule.hours_at(step), schedule.hours_at(step + 1)
        assert point.values.lr == pytest.approx(math.sqrt(point.values.kappa) * cfg.optim.lr)
        assert point.lr == pytest.approx(point.values.lr * _data_hours_lr_factor(start, end), rel=1e-12)
        factors.append(point.lr / point.values.lr)
    steps_per_hour = [schedule.steps_at(h + 1) - schedule.steps_at(h) for h in (0, 1, 3)]
    assert steps_per_hour == [15, 8, 4]  # the batch grows 2x, then 2x again
    # in the warm-up, each step raises the lr by its share of the data: 240 s of the 2 h up to
    # the first stage change (step 15), 480 s after it
    assert factors[14] - factors[13] == pytest.approx(240 / 3600 / 2)
    assert factors[15] - factors[14] == pytest.approx(480 / 3600 / 2)


@pytest.mark.parametrize(("gpus", "kappa", "betas"), [
    (1, 0.125, "0.9875, 0.9975"), (2, 0.25, "0.975, 0.995"), (4, 0.5, "0.95, 0.99"), (8, 1, "0.9, 0.98"),
    (16, 2, "0.8, 0.96"), (64, 8, "0.2, 0.84"),
])
def test_dry_run_of_the_paper_config_prints_valid_values_at_every_gpu_count(gpus, kappa, betas, capsys):
    assert main(["train", "--config", "configs/librispeech_paper.yaml", "--dry-run", "--world-size", str(gpus)]) == 0
    report = capsys.readouterr().out
    assert f"kappa = {kappa:.4g};" in report and f"| 0.9, 0.98      | {betas}" in report


def test_dry_run_refuses_a_kappa_whose_adam_beta_leaves_the_rules_range(capsys):
    """128 GPUs are kappa 16 for the paper config: beta1 = 1 - 16 (1 - 0.9) < 0 is refused by
    default, naming the value, the kappa and the limit."""
    assert main(["train", "--config", "configs/librispeech_paper.yaml", "--dry-run", "--world-size", "128"]) == 2
    err = capsys.readouterr().err
    assert "optim.betas[0]=0.9 scaled at kappa=16 gives -0.6" in err and "kappa <= 1 / (1 - beta) = 10" in err
