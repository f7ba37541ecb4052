"""Training: a CTC transformer student, supervised first, then taught by its EMA teacher.

    asr train --config configs/synth_tiny.yaml                          # one process (CPU or GPU)
    torchrun --nproc-per-node 8 -m asr train --config configs/base.yaml  # DDP, one GPU a process

:func:`train` reads top to bottom: join the process group, ask the schedule for every derived
value (kappa from the global batch) and print it, build the parts, resume, then loop. Each
iteration asks the schedule where the run is, draws one update's micro-batches (all labeled or
all pseudo-labeled), runs the one :func:`asr.step.train_step`, then logs, evaluates and
checkpoints on cadences counted in data hours.

The teacher is an fp32 EMA of the student on every rank. It is not wrapped in DDP: DDP keeps
the students identical, so identical updates keep the teachers identical.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel as DDP

from asr.checkpoint import save_checkpoint
from asr.config import config_from_dict, to_yaml
from asr.data.features import LogMelFeatures
from asr.data.loader import BatchLoader
from asr.data.sampler import is_unlabeled_turn
from asr.data.shards import SplitIndex
from asr.data.specaug import SpecAugment
from asr.ema import EMATeacher
from asr.evaluate import dev_wer
from asr.experiment import check_compatible, checkpoint_to_continue, load_splits, prepare_tokenizer
from asr.metrics import Meter, RunLog
from asr.model import build_model
from asr.optim import apply_values, build_optimizer, rescale_state
from asr.runtime import Runtime, setup_runtime
from asr.scaling import Derived, Schedule, SchedulePoint, scaling_report
from asr.state import (
    TrainState,
    kappa_record,
    rng_state,
    same_scale,
    set_rng_state,
    training_payload,
)
from asr.step import SkippedSteps, StepOptions, StepParts, train_step
from asr.text.tokenizer import Tokenizer, tokenizer_from_dict


@dataclass
class Run:
    """Everything one training run holds while it loops."""

    cfg: DictConfig
    schedule: Schedule
    parts: StepParts
    state: TrainState
    values: Derived
    """The current stage's kappa and effective hyper-parameters."""
    labeled: BatchLoader
    unlabeled: BatchLoader | None
    dev: dict[str, SplitIndex]
    exp_dir: Path
    writer: RunLog | None
    """Rank 0's metrics.jsonl and TensorBoard; None on the other ranks."""
    meter: Meter
    skipped: SkippedSteps

    @property
    def rt(self) -> Runtime:
        return self.parts.rt

    def audio_hours(self) -> float:
        """Real audio seen so far (padding excluded), from the global data positions."""
        return self.state.audio_hours(self.labeled.hours_per_epoch,
                                      self.unlabeled.hours_per_epoch if self.unlabeled else 0.0)


def train(cfg: DictConfig, *, dry_run: bool = False) -> int:
    rt = setup_runtime(cfg.train.device, cfg.train.precision)
    schedule = Schedule(cfg, rt.world_size)
    rt.log(to_yaml(cfg))
    rt.log(scaling_report(schedule, cfg))
    if dry_run:
        return 0
    splits = load_splits(cfg)  # a wrong shards_dir or split name fails before anything is written
    exp_dir = Path(cfg.train.exp_dir)
    payload, source = checkpoint_to_continue(cfg, exp_dir)
    if payload is not None:  # checked before config.yaml is replaced: a refused resume changes nothing
        check_compatible(config_from_dict(payload["config"]), cfg)
    if rt.is_main:
        exp_dir.mkdir(parents=True, exist_ok=True)
        (exp_dir / "config.yaml").write_text(to_yaml(cfg))

    tokenizer = (tokenizer_from_dict(payload["tokenizer"]) if payload
                 else prepare_tokenizer(cfg.tokenizer, cfg.data, exp_dir, rt))
    parts = build(cfg, rt, tokenizer, schedule)
    state, values = TrainState(), schedule.at(0).values
    if payload is not None:
        state, values = resume(parts, payload, cfg, schedule, own=source == exp_dir / "checkpoints" / "last.pt")
        rt.log(f"continuing at step {state.step} from {source}")
    if compiles(cfg, rt):  # the bare model: checkpoints keep plain parameter names
        parts.model.compile_blocks()
    if rt.world_size > 1:  # LayerDrop leaves parameters without gradients on some steps
        parts.student = DDP(parts.model, find_unused_parameters=max(cfg.model.layerdrop, cfg.pl.layerdrop or 0) > 0)
    labeled, unlabeled = make_loaders(cfg, splits, state, rt)
    if payload is not None:  # last: building the loaders must not shift any RNG stream
        set_rng_state(payload["rng"][rt.rank % len(payload["rng"])], rt.device)
        parts.aug_generator.set_state(payload["aug_generator"][rt.rank % len(payload["aug_generator"])])
    run = Run(cfg, schedule, parts, state, values, labeled, unlabeled,
              {name: splits[name] for name in cfg.data.dev_splits}, exp_dir,
              RunLog(exp_dir) if rt.is_main else None, Meter(rt.device, rt.world_size),
              SkippedSteps(rt.device, state.skipped_steps))
    del payload
    try:
        loop(run)
        finish(run)
    finally:
        if run.writer is not None:
            run.writer.close()
    return 0


# ----------------------------------------------------------------------------------------------
# Build and resume


def build(cfg: DictConfig, rt: Runtime, tokenizer: Tokenizer, schedule: Schedule) -> StepParts:
    """Model, features, SpecAugment and optimizer, fresh (the teacher comes later).

    Seeding order matters for exact resume: the model is initialised from ``train.seed`` (the
    same on every rank), then each rank seeds its own dropout and augmentation streams.
    """
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, n_mels=cfg.features.n_mels, vocab_size=tokenizer.vocab_size).to(rt.device)
    features = LogMelFeatures.from_config(cfg.features).to(rt.device)
    specaug = SpecAugment.from_config(cfg.specaug).to(rt.device)
    torch.manual_seed(cfg.train.seed + 1 + rt.rank)  # same init on every rank, own dropout masks
    aug_generator = torch.Generator(rt.device).manual_seed(cfg.train.seed * 1000 + rt.rank)
    optimizer = build_optimizer(cfg.optim.name, model.parameters(), schedule.at(0).values, rt.device)
    rt.log(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
           f"{tokenizer.identity()['kind']} tokenizer ({tokenizer.vocab_size} classes), device {rt.device}, "
           f"world size {rt.world_size}, precision {rt.autocast_dtype or torch.float32}")
    return StepParts(model=model, student=model, optimizer=optimizer, teacher=None, features=features,
                     specaug=specaug, aug_generator=aug_generator, tokenizer=tokenizer, rt=rt)


def resume(parts: StepParts, payload: dict[str, Any], cfg: DictConfig, schedule: Schedule, *,
           own: bool) -> tuple[TrainState, Derived]:
    """Load a checkpoint's state into the parts; return the loop state and the current values.

    A checkpoint written at another batch (world size, accumulation) continues at the same data
    hours: its step is re-counted by the schedule and the optimizer state is rescaled to the new
    kappa.
    """
    parts.model.load_state_dict(payload["student"])
    parts.optimizer.load_state_dict(payload["optimizer"])
    if payload["teacher"] is not None:
        parts.teacher = make_teacher(parts, cfg)
        parts.teacher.load_state_dict(payload["teacher"])
    state = TrainState()
    state.load_state_dict(payload["train_state"])
    if not own:
        state.best_dev_wer = float("inf")  # a new run: its own best
    values = schedule.at(state.step).values
    if state.kappa_history:  # the checkpoint's steps ran at the batch it last recorded
        saved = Schedule(config_from_dict(payload["config"]), int(state.kappa_history[-1]["world_size"]))
        saved_values = saved.at(max(state.step - 1, 0)).values
        state.step = schedule.resume_step(saved, state.step)
        values = schedule.at(state.step).values
        if values.kappa != saved_values.kappa:  # the optimizer state to what the new kappa would hold
            rescale_state(parts.optimizer, saved_values, values)
    if parts.teacher is not None and cfg.pl.enabled and state.step >= schedule.steps.pl_start:
        parts.model.set_dropout(*pl_dropout(cfg))
    return state, values


def make_loaders(cfg: DictConfig, splits: dict[str, SplitIndex], state: TrainState,
                 rt: Runtime) -> tuple[BatchLoader, BatchLoader | None]:
    """This rank's labeled and unlabeled streams, from the global data positions."""
    args = {"rank": rt.rank, "world_size": rt.world_size, "pin_memory": rt.device.type == "cuda"}
    labeled = BatchLoader.from_config(splits[cfg.data.train_split], cfg.data, start=state.labeled, **args)
    unlabeled = None
    if cfg.pl.enabled:
        unlabeled = BatchLoader.from_config(splits[cfg.data.unlabeled_split], cfg.data,
                                            start=state.unlabeled, **args)
    rt.log(f"data: {cfg.data.train_split} {labeled.hours_per_epoch:.2f} h an epoch"
           + (f", {cfg.data.unlabeled_split} {unlabeled.hours_per_epoch:.2f} h an epoch" if unlabeled else ""))
    return labeled, unlabeled


# ----------------------------------------------------------------------------------------------
# The loop


def loop(run: Run) -> None:
    """Optimizer steps until the schedule's stop step, with logs, evaluations and checkpoints."""
    cfg, state, parts = run.cfg, run.state, run.parts
    options = StepOptions(grad_clip=cfg.optim.grad_clip, unlabeled_weight=cfg.pl.unlabeled_weight,
                          min_tokens=cfg.pl.min_tokens, min_confidence=cfg.pl.min_confidence)
    labeled, unlabeled = iter(run.labeled), iter(run.unlabeled) if run.unlabeled else None
    clock = Progress(run)
    while state.step < run.schedule.stop_step:
        point = run.schedule.at(state.step)
        enter_step(run, point)
        # a whole update is labeled or pseudo-labeled, so a step has the same content at any
        # split of kappa into ranks x accumulation
        use_unlabeled = point.pl_active and is_unlabeled_turn(state.updates, cfg.pl.unlabeled_per_labeled)
        stream = unlabeled if use_unlabeled else labeled
        micro_batches = [next(stream) for _ in range(point.values.accum_steps)]
        if use_unlabeled:
            state.unlabeled = micro_batches[-1].position
        else:
            state.labeled = micro_batches[-1].position
        parts.model.set_layerdrop_seed(cfg.train.seed * 1_000_003 + state.updates)
        train_step(parts, micro_batches, unlabeled=use_unlabeled, augment=point.specaug_active,
                   rho=point.values.rho, options=options, meter=run.meter, skipped=run.skipped)
        state.step += 1
        state.updates += 1

        log_due = state.step % cfg.train.log_every_steps == 0 or state.step == run.schedule.stop_step
        if log_due and not clock.log(point):
            break
        if state.step < run.schedule.stop_step:
            is_best = run.schedule.eval_due(state.step) and evaluate_dev(run)
            if is_best or run.schedule.checkpoint_due(state.step):  # one save for both
                save(run, is_best)


def enter_step(run: Run, point: SchedulePoint) -> None:
    """Bring the optimizer, the teacher and the dropout to what step ``point.step`` runs with."""
    state, parts, cfg = run.state, run.parts, run.cfg
    if point.values is not run.values:  # a progressive stage: kappa and every scaled value change
        rescale_state(parts.optimizer, run.values, point.values)
        run.values = point.values
        v = point.values
        run.rt.log(f"step {point.step}: progressive stage {point.stage}: accum {v.accum_steps}, "
                   f"kappa {v.kappa:g}, lr {v.lr:.3g}, rho {v.rho:.6f}")
    if not state.kappa_history or not same_scale(state.kappa_history[-1], run.values):
        state.kappa_history.append(kappa_record(point.step, run.values))
    apply_values(parts.optimizer, run.values, point.lr)
    if parts.teacher is None and (cfg.ema.start == "step0" or point.pl_active):
        parts.teacher = make_teacher(parts, cfg)  # a copy of the student as it is now
        run.rt.log(f"step {point.step}: teacher created")
    if point.pl_active and point.step == run.schedule.steps.pl_start:
        parts.model.set_dropout(*pl_dropout(cfg))


class Progress:
    """The logging cadence: one line with rate and ETA, one metrics row, and the checks that
    need the host (non-finite runs, the wall-clock budget)."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.t_start, self.step_at_start = time.perf_counter(), run.state.step
        self.audio_at_start = run.audio_hours()

    def log(self, point: SchedulePoint) -> bool:
        """Write the interval's line and row; False when the run must stop now."""
        run, state, cfg = self.run, self.run.state, self.run.cfg
        stats = run.meter.flush()
        elapsed = time.perf_counter() - self.t_start
        hours, audio = run.schedule.hours_at(state.step), run.audio_hours()
        rate = (audio - self.audio_at_start) / max(elapsed / 3600, 1e-9)
        stop = run.schedule.stop_step
        eta = (stop - state.step) * elapsed / max(state.step - self.step_at_start, 1)
        teacher = run.parts.teacher is not None
        lr = run.parts.optimizer.param_groups[0]["lr"]
        run.rt.log(f"step {state.step}/{stop} | {hours:.2f} data-h ({audio:.2f} h audio)"
                   + (f" | loss {stats['loss']:.3f}" if stats["batches"] else "")
                   + (f" | pl-loss {stats['pl_loss']:.3f}" if stats["pl_batches"] else "")
                   + f" | lr {lr:.2e} | kappa {run.values.kappa:g}"
                   + (f" | rho {run.values.rho:.5f}" if teacher else "")
                   + f" | {rate:.0f} audio-h/h | ETA {format_seconds(eta)}")
        if run.writer is not None:
            run.writer.write("train", state.step, hours, {
                **stats, "audio_hours": audio, "lr": lr, "kappa": run.values.kappa,
                "rho": run.values.rho if teacher else float("nan"), "audio_hours_per_hour": rate})
        longest = run.skipped.read_longest()
        if longest >= cfg.train.max_nonfinite_in_row:
            save(run)
            raise RuntimeError(
                f"{longest} optimizer steps in a row had a non-finite loss or gradient "
                f"(train.max_nonfinite_in_row={cfg.train.max_nonfinite_in_row}); "
                f"stopped, state saved in {run.exp_dir / 'checkpoints' / 'last.pt'}")
        if cfg.train.max_minutes and run.rt.any_rank(elapsed / 60 > cfg.train.max_minutes):
            run.rt.log(f"wall-clock budget of {cfg.train.max_minutes:g} min spent: stopping")
            return False
        return True


def evaluate_dev(run: Run) -> bool:
    """Greedy dev WER of student and teacher; True when the student's is a new best."""
    rt, parts, state = run.rt, run.parts, run.state
    line, first_wer, values = [], None, {}
    nets = [("student", parts.model)] + ([("teacher", parts.teacher.module)] if parts.teacher else [])
    for label, net in nets:
        for name, index in run.dev.items():
            wer = dev_wer(net, parts.features, index, parts.tokenizer, rt.device, rank=rt.rank,
                          world_size=rt.world_size, batch_seconds=run.cfg.eval.batch_seconds,
                          autocast_dtype=rt.autocast_dtype)
            line.append(f"{label} {name} {100 * wer:.2f}")
            values[f"{label}/{name}"] = 100 * wer
            first_wer = wer if first_wer is None else first_wer
    rt.log(f"dev WER % at step {state.step}: " + " | ".join(line))
    if run.writer is not None:
        run.writer.write("dev_wer", state.step, run.schedule.hours_at(state.step), values)
    if first_wer is not None and first_wer < state.best_dev_wer:
        state.best_dev_wer = first_wer
        return True
    return False


def save(run: Run, is_best: bool = False) -> None:
    """One checkpoint; rank 0 writes, every rank's RNG states are gathered so each resumes its own."""
    rt, parts, state = run.rt, run.parts, run.state
    state.skipped_steps = run.skipped.total()  # exact also between logging steps
    rngs, gens = [rng_state(rt.device)], [parts.aug_generator.get_state().cpu()]
    if rt.world_size > 1:
        all_rngs: list[Any] = [None] * rt.world_size
        all_gens: list[Any] = [None] * rt.world_size
        dist.all_gather_object(all_rngs, rngs[0])
        dist.all_gather_object(all_gens, gens[0])
        rngs, gens = all_rngs, all_gens
    if not rt.is_main:
        return
    payload = training_payload(parts.model, parts.teacher, parts.optimizer, state, rngs, gens,
                               OmegaConf.to_container(run.cfg, resolve=True), parts.tokenizer.to_dict())
    save_checkpoint(payload, run.exp_dir / "checkpoints", state.updates, keep_last=run.cfg.train.keep_last,
                    is_best=is_best)


def finish(run: Run) -> None:
    """The last evaluation and checkpoint, then leave the process group."""
    is_best = bool(run.cfg.train.eval_every_hours) and evaluate_dev(run)
    save(run, is_best)
    run.rt.log(f"done: step {run.state.step}, {run.schedule.hours_at(run.state.step):.2f} data-h "
               f"({run.audio_hours():.2f} h audio), {run.state.skipped_steps} skipped steps; "
               f"checkpoints in {run.exp_dir / 'checkpoints'}")
    if run.rt.world_size > 1:
        # DDP's reducer holds the process group: drop it first, so that destroy_process_group
        # frees the group (with the GIL released). Freed by the reducer, with the GIL held, a
        # gloo group waits for its worker thread, which may need the GIL to free a finished
        # collective's tensors: a deadlock at exit, seen about once in twenty runs.
        run.parts.student = run.parts.model
        dist.barrier()
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------
# Small helpers


def compiles(cfg: DictConfig, rt: Runtime) -> bool:
    """Whether the encoder blocks run compiled (``train.compile``)."""
    return cfg.train.compile == "blocks" or (cfg.train.compile == "auto" and rt.device.type == "cuda")


def make_teacher(parts: StepParts, cfg: DictConfig) -> EMATeacher:
    """The EMA teacher: a copy of the student as it is now, its blocks compiled like the student's."""
    teacher = EMATeacher(parts.model)
    if compiles(cfg, parts.rt):
        teacher.module.compile_blocks()
    return teacher


def pl_dropout(cfg: DictConfig) -> tuple[float, float]:
    """Dropout and LayerDrop of the pseudo-label phase (the model's own where not set)."""
    return (cfg.model.dropout if cfg.pl.dropout is None else cfg.pl.dropout,
            cfg.model.layerdrop if cfg.pl.layerdrop is None else cfg.pl.layerdrop)


def format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


if __name__ == "__main__":  # pragma: no cover - use `asr train`
    sys.exit("use: asr train --config FILE [key=value ...]")
