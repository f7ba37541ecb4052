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

Failures (README, "What happens when things fail"): a signal saves and exits with
:data:`asr.preemption.EXIT_PREEMPTED`; bad data is skipped and counted; a stalled rank is named.
"""

from __future__ import annotations

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
from asr.data.bad_data import BadData
from asr.data.features import LogMelFeatures
from asr.data.loader import BatchLoader
from asr.data.sampler import is_unlabeled_turn
from asr.data.shards import SplitIndex
from asr.data.specaug import SpecAugment
from asr.ema import EMATeacher
from asr.experiment import (
    ExperimentLock,
    check_compatible,
    check_fresh_start,
    check_transcripts,
    checkpoint_to_continue,
    load_splits,
    make_loaders,
    prepare_tokenizer,
)
from asr.metrics import Meter, RunLog
from asr.model import build_model
from asr.optim import apply_values, build_optimizer, rescale_state
from asr.preemption import EXIT_PREEMPTED, StopSignal
from asr.runtime import Runtime, setup_runtime
from asr.scaling import Derived, Schedule, SchedulePoint, scaling_report
from asr.state import (
    TrainState,
    continued_step,
    kappa_record,
    rng_state,
    same_scale,
    saved_schedule,
    set_rng_state,
    training_payload,
)
from asr.step import SkippedSteps, StepOptions, StepParts, train_step
from asr.text.tokenizer import Tokenizer, tokenizer_from_dict
from asr.train_log import Progress, evaluate_dev
from asr.watchdog import Heartbeat, is_collective_failure


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
    bad: BadData
    stop: StopSignal
    heartbeat: Heartbeat
    saved_step: int = -1
    """The step of the last checkpoint written (a preemption right after it saves nothing new)."""

    @property
    def rt(self) -> Runtime:
        return self.parts.rt

    def audio_hours(self) -> float:
        """Real audio seen so far (padding excluded), from the global data positions."""
        return self.state.audio_hours(self.labeled.hours_per_epoch,
                                      self.unlabeled.hours_per_epoch if self.unlabeled else 0.0)

    def sync_bad_data(self) -> None:
        """Sum the skipped-utterance counts over the ranks into the state a checkpoint saves
        (a collective: every rank calls it at the same step)."""
        self.bad.sync()
        self.state.bad_data = self.bad.state_dict()


def train(cfg: DictConfig, *, dry_run: bool = False, world_size: int | None = None) -> int:
    """Train as ``cfg`` says; return the exit status (0, or :data:`EXIT_PREEMPTED` after a signal).

    ``dry_run`` prints the resolved config and the scaling report only: for ``world_size``
    processes when given (no process is started), else for this launch's."""
    if dry_run and world_size is not None:
        print(to_yaml(cfg) + scaling_report(Schedule(cfg, world_size), cfg), flush=True)
        return 0
    rt = setup_runtime(cfg.train.device, cfg.train.precision, timeout_s=cfg.train.collective_timeout_s)
    schedule = Schedule(cfg, rt.world_size)
    rt.log(to_yaml(cfg))
    rt.log(scaling_report(schedule, cfg))
    if dry_run:
        return 0
    splits = load_splits(cfg)  # a wrong shards_dir or split name, or no transcripts: refused before any write
    exp_dir = Path(cfg.train.exp_dir)
    payload, source = checkpoint_to_continue(cfg, exp_dir, rt.log)
    state = TrainState()
    if payload is None:
        check_fresh_start(cfg, exp_dir)
    else:  # checked before config.yaml is replaced: a refused resume changes nothing
        check_compatible(config_from_dict(payload["config"]), cfg)
        state.load_state_dict(payload["train_state"])
        if continued_step(payload, state, schedule) >= schedule.stop_step:
            rt.log(f"nothing to do: {source} is at step {state.step}, and this run stops at step "
                   f"{schedule.stop_step}")
            return 0
    lock = ExperimentLock(exp_dir) if rt.is_main else None  # one trainer a folder
    try:
        return run_to_end(start(cfg, rt, schedule, splits, payload, source, state))
    finally:
        if lock is not None:
            lock.release()


def start(cfg: DictConfig, rt: Runtime, schedule: Schedule, splits: dict[str, SplitIndex],
          payload: dict[str, Any] | None, source: Path | None, state: TrainState) -> Run:
    """The tokenizer and the loaders (their checks refuse before config.yaml is written), then
    the parts, resumed from ``payload`` when there is one."""
    exp_dir = Path(cfg.train.exp_dir)
    tokenizer = (tokenizer_from_dict(payload["tokenizer"]) if payload
                 else prepare_tokenizer(cfg.tokenizer, cfg.data, exp_dir, rt))
    text_ok = check_transcripts(splits[cfg.data.train_split], tokenizer, "data.train_split")
    labeled, unlabeled = make_loaders(cfg, splits, state, rt, text_ok)  # a changed data plan is refused here
    if rt.is_main:
        (exp_dir / "config.yaml").write_text(to_yaml(cfg))
    parts = build(cfg, rt, tokenizer, schedule)
    values = schedule.at(0).values
    if payload is not None:
        values = resume(parts, payload, cfg, schedule, state, own=source.parent == exp_dir / "checkpoints")
        rt.log(f"continuing at step {state.step} from {source}")
    if compiles(cfg, rt):  # the bare model: checkpoints keep plain parameter names
        parts.model.compile_blocks()
    if rt.world_size > 1:  # LayerDrop leaves parameters without gradients on some steps
        parts.student = DDP(parts.model, find_unused_parameters=max(cfg.model.layerdrop, cfg.pl.layerdrop or 0) > 0)
    if payload is not None:  # last: building the loaders must not shift any RNG stream
        set_rng_state(payload["rng"][rt.rank % len(payload["rng"])], rt.device)
        parts.aug_generator.set_state(payload["aug_generator"][rt.rank % len(payload["aug_generator"])])
    sizes = {loader.index.split: loader.utterances_per_epoch for loader in (labeled, unlabeled) if loader}
    return Run(cfg, schedule, parts, state, values, labeled, unlabeled,
               {name: splits[name] for name in cfg.data.dev_splits}, exp_dir,
               RunLog(exp_dir) if rt.is_main else None, Meter(rt.device, rt.world_size),
               SkippedSteps(rt.device, state.skipped_steps),
               BadData(cfg.data.max_bad_fraction, sizes, world_size=rt.world_size, device=rt.device,
                       totals=state.bad_data),
               StopSignal(rt, cfg.train.signal_check_steps), Heartbeat(rt))


def run_to_end(run: Run) -> int:
    """The loop, then the last evaluation and checkpoint, or one checkpoint after a signal."""
    rt = run.rt
    try:
        if loop(run):
            if run.saved_step != run.state.step:
                save(run, final=True)
            rt.log(f"stopped by {run.stop.describe()} after step {run.state.step}, state saved in "
                   f"{run.exp_dir / 'checkpoints' / 'last.pt'}; the same command resumes (exit status {EXIT_PREEMPTED})")
            status = EXIT_PREEMPTED
        else:
            finish(run)
            status = 0
        leave(run)
        return status
    except Exception as err:
        if rt.world_size > 1 and is_collective_failure(err):
            raise run.heartbeat.stall_error(err, run.state.step, run.cfg.train.collective_timeout_s) from err
        raise
    finally:
        run.stop.restore()
        run.heartbeat.close()
        if run.writer is not None:
            run.writer.close()


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


def resume(parts: StepParts, payload: dict[str, Any], cfg: DictConfig, schedule: Schedule,
           state: TrainState, *, own: bool) -> Derived:
    """Load a checkpoint's weights and optimizer into the parts (``state`` holds its loop state
    already); return the current values.

    A checkpoint written at another batch (world size, accumulation) continues at the same data
    hours: its step is re-counted by the schedule and the optimizer state is rescaled to the new
    kappa.
    """
    parts.model.load_state_dict(payload["student"])
    parts.optimizer.load_state_dict(payload["optimizer"])
    if payload["teacher"] is not None:
        parts.teacher = make_teacher(parts, cfg)
        parts.teacher.load_state_dict(payload["teacher"])
    if not own:
        state.best_dev_wer = float("inf")  # a new run: its own best
    values = schedule.at(state.step).values
    saved = saved_schedule(payload, state)  # the checkpoint's steps ran at the batch it last recorded
    if saved is not None:
        saved_values = saved.at(max(state.step - 1, 0)).values
        state.step = schedule.resume_step(saved, state.step)
        values = schedule.at(state.step).values
        if values.kappa != saved_values.kappa:  # the optimizer state to what the new kappa would hold
            rescale_state(parts.optimizer, saved_values, values)
    if parts.teacher is not None and cfg.pl.enabled and state.step >= schedule.steps.pl_start:
        parts.model.set_dropout(*pl_dropout(cfg))
    return values


# ----------------------------------------------------------------------------------------------
# The loop


def loop(run: Run) -> bool:
    """Optimizer steps until the schedule's stop step, with logs, evaluations and checkpoints;
    True when a signal stopped it early (every rank after the same step)."""
    cfg, state, parts = run.cfg, run.state, run.parts
    options = StepOptions(grad_clip=cfg.optim.grad_clip, unlabeled_weight=cfg.pl.unlabeled_weight,
                          min_tokens=cfg.pl.min_tokens, min_confidence=cfg.pl.min_confidence)
    labeled, unlabeled = iter(run.labeled), iter(run.unlabeled) if run.unlabeled else None
    clock = Progress(run, save)
    while state.step < run.schedule.stop_step:
        point = run.schedule.at(state.step)
        enter_step(run, point)
        # a whole update is labeled or pseudo-labeled, so a step has the same content at any
        # split of kappa into ranks x accumulation
        use_unlabeled = point.pl_active and is_unlabeled_turn(state.updates, cfg.pl.unlabeled_per_labeled)
        stream = unlabeled if use_unlabeled else labeled
        waiting_since = time.perf_counter()
        micro_batches = [next(stream) for _ in range(point.values.accum_steps)]
        run.meter.add_data_wait(time.perf_counter() - waiting_since)
        if use_unlabeled:
            state.unlabeled = micro_batches[-1].position
        else:
            state.labeled = micro_batches[-1].position
        run.bad.add((run.unlabeled if use_unlabeled else run.labeled).index.split, micro_batches)
        parts.model.set_layerdrop_seed(cfg.train.seed * 1_000_003 + state.updates)
        train_step(parts, micro_batches, unlabeled=use_unlabeled, augment=point.specaug_active,
                   rho=point.values.rho, options=options, meter=run.meter, skipped=run.skipped)
        state.step += 1
        state.updates += 1

        run.heartbeat.step = state.step
        log_due = state.step % cfg.train.log_every_steps == 0 or state.step == run.schedule.stop_step
        if log_due and not clock.log(point):
            break
        if state.step < run.schedule.stop_step:
            is_best = run.schedule.eval_due(state.step) and evaluate_dev(run)
            if is_best or run.schedule.checkpoint_due(state.step):  # one save for both
                save(run, is_best)
            if run.stop.requested(state.step):  # SIGTERM/SIGINT: a step boundary, agreed by every rank
                return True
    return False


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


def save(run: Run, is_best: bool = False, *, final: bool = False) -> None:
    """One checkpoint; rank 0 writes, every rank's RNG states are gathered so each resumes its own.

    A periodic save that fails (a full disk) leaves the previous checkpoint in place and is
    tried again at the next one; a ``final`` save (the end, a signal) that fails is an error.
    """
    rt, parts, state = run.rt, run.parts, run.state
    state.skipped_steps = run.skipped.total()  # exact also between logging steps
    run.sync_bad_data()
    rngs, gens = rt.gather(rng_state(rt.device)), rt.gather(parts.aug_generator.get_state().cpu())
    if not rt.is_main:
        return
    payload = training_payload(parts.model, parts.teacher, parts.optimizer, state, rngs, gens,
                               OmegaConf.to_container(run.cfg, resolve=True), parts.tokenizer.to_dict())
    try:
        save_checkpoint(payload, run.exp_dir / "checkpoints", state.updates, keep_last=run.cfg.train.keep_last,
                        is_best=is_best)
        run.saved_step = state.step
    except OSError as err:
        if final:
            raise
        rt.log(f"warning: the checkpoint of step {state.step} was not written ({err}); the previous one "
               "stays in place, and the next checkpoint tries again")


def finish(run: Run) -> None:
    """The last evaluation and checkpoint."""
    is_best = bool(run.cfg.train.eval_every_hours) and evaluate_dev(run)
    save(run, is_best, final=True)
    run.rt.log(f"done: step {run.state.step}, {run.schedule.hours_at(run.state.step):.2f} data-h "
               f"({run.audio_hours():.2f} h audio), {run.state.skipped_steps} skipped steps, "
               f"{run.bad.skipped()} bad utterances skipped; checkpoints in {run.exp_dir / 'checkpoints'}")


def leave(run: Run) -> None:
    """Leave the process group, every rank together."""
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


if __name__ == "__main__":  # pragma: no cover - use `asr train`
    sys.exit("use: asr train --config FILE [key=value ...]")
