"""Training: a CTC transformer student, supervised first, then taught by its EMA teacher.

    asr train --config configs/synth_tiny.yaml                          # one process (CPU or GPU)
    torchrun --nproc-per-node 8 -m asr train --config configs/base.yaml  # DDP, one GPU a process

The loop reads top to bottom: set up the process group, derive every hyper-parameter from
the scaling module (kappa from the global batch), build tokenizer / model / features /
optimizer, resume, then per optimizer step: choose labeled or pseudo-labeled micro-batches,
accumulate, clip, step (skipped on the device when a gradient is non-finite), update the
teacher, then log / evaluate / checkpoint on cadences counted in hours of audio.

The teacher is an fp32 EMA of the student on every rank. It is not wrapped in DDP: DDP keeps
the students identical, so identical updates keep the teachers identical.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel as DDP

from asr import scaling
from asr.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from asr.config import config_from_dict, to_yaml
from asr.data.features import LogMelFeatures
from asr.data.loader import Batch, BatchLoader
from asr.data.sampler import DataPosition, is_unlabeled_turn
from asr.data.shards import SplitIndex, load_index
from asr.data.specaug import SpecAugment
from asr.ema import EMATeacher, unwrap_model
from asr.evaluate import dev_wer
from asr.metrics import Meter, RunLog
from asr.model import build_model
from asr.pseudo_label import make_pseudo_labels, pseudo_label_wer
from asr.text.tokenizer import Tokenizer, build_tokenizer, load_tokenizer, tokenizer_from_dict

# ----------------------------------------------------------------------------------------------
# Processes and devices


@dataclass(frozen=True)
class Runtime:
    """Where this process runs: its rank in the job and its device."""

    rank: int
    world_size: int
    device: torch.device
    autocast_dtype: torch.dtype | None  # bf16 on CUDA by default, none (fp32) on CPU

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_runtime(cfg: DictConfig) -> Runtime:
    """Join the torchrun process group when there is one (NCCL on GPU, gloo on CPU)."""
    want = cfg.train.device
    use_cuda = torch.cuda.is_available() if want == "auto" else want == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda, but no CUDA device is visible")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", device_id=device if use_cuda else None)
    precision = cfg.train.precision
    bf16 = precision == "bf16" or (precision == "auto" and use_cuda)
    return Runtime(rank, world_size, device, torch.bfloat16 if bf16 else None)


def log(rt: Runtime, message: str) -> None:
    if rt.is_main:
        print(message, flush=True)


# ----------------------------------------------------------------------------------------------
# Building blocks


def build_optimizer(name: str, params: list[torch.nn.Parameter], hp: scaling.Derived,
                    device: torch.device) -> torch.optim.Optimizer:
    """The optimizer at the effective (kappa-scaled) values; fused kernels where torch has them."""
    fused = {"fused": True} if device.type in ("cuda", "cpu") else {}
    if name == "sgd":
        return torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay, **fused)
    if name == "adam":
        return torch.optim.Adam(params, lr=hp.lr, betas=hp.betas, eps=hp.eps, weight_decay=hp.weight_decay, **fused)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=hp.lr, betas=hp.betas, eps=hp.eps, weight_decay=hp.weight_decay, **fused)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=hp.lr, eps=hp.eps, weight_decay=hp.weight_decay,
                                   **(fused if device.type == "cpu" else {}))
    raise ValueError(f"optim.name: unknown optimizer {name!r}")


def apply_hyperparameters(optimizer: torch.optim.Optimizer, hp: scaling.Derived, lr: float) -> None:
    """Set the kappa-dependent values (betas, eps, momentum, weight decay) and this step's lr."""
    for group in optimizer.param_groups:
        group.update(hp.param_group())
        group["lr"] = lr


def rescale_optimizer_state(optimizer: torch.optim.Optimizer, before: scaling.Derived,
                            after: scaling.Derived) -> None:
    """At a progressive stage change, bring the carried state to what the new kappa would hold."""
    factors = scaling.optimizer_state_scales(before, after)
    for state in optimizer.state.values():
        for key, factor in factors.items():
            if key in state:
                state[key].mul_(factor)


def lr_at(step: int, hp: scaling.Derived, cfg: DictConfig) -> float:
    """Learning rate of optimizer step ``step``: linear warm-up, then the configured decay.

    Every boundary is a step count from the scaling module, i.e. a point in audio seen."""
    steps, peak = hp.steps, hp.lr
    if step < steps.warmup:
        return peak * (step + 1) / steps.warmup
    decay = cfg.schedule.decay
    if decay == "step":
        return peak * cfg.schedule.step_factor ** sum(step >= b for b in steps.decay_boundaries)
    if decay == "constant" or step < steps.decay_start:
        return peak
    progress = min(1.0, (step - steps.decay_start) / max(steps.total - steps.decay_start, 1))
    floor = cfg.schedule.final_lr_ratio
    if decay == "cosine":
        return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
    return peak * (1 - (1 - floor) * progress)  # linear


def load_splits(cfg: DictConfig) -> dict[str, SplitIndex]:
    """The shard index of every split the run reads (training, unlabeled, dev), by name."""
    shards = Path(cfg.data.shards_dir)
    keys = {cfg.data.train_split: "data.train_split"}
    if cfg.pl.enabled:
        keys[cfg.data.unlabeled_split] = "data.unlabeled_split"
    keys.update((name, "data.dev_splits") for name in cfg.data.dev_splits if name not in keys)
    indices = {}
    for name, key in keys.items():
        try:
            indices[name] = load_index(shards / name)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{key}: split '{name}' not found under data.shards_dir={shards}: "
                                    f"{err}") from None
    return indices


def prepare_tokenizer(cfg: DictConfig, exp_dir: Path, rt: Runtime) -> Tokenizer:
    """Load the experiment's tokenizer, building it first (rank 0) when it does not exist yet."""
    path = Path(cfg.tokenizer.path) if cfg.tokenizer.path else exp_dir / "tokenizer"
    if rt.is_main and not (path / "tokenizer.json").exists():
        source = Path(cfg.data.shards_dir) / cfg.data.train_split
        build_tokenizer(cfg.tokenizer.kind, path, text_source=source,
                        vocab_size=cfg.tokenizer.vocab_size, model_type=cfg.tokenizer.model_type)
    if rt.world_size > 1:
        dist.barrier()
    return load_tokenizer(path)


# ----------------------------------------------------------------------------------------------
# Training state: everything beyond weights and optimizer that a checkpoint must restore


@dataclass
class TrainState:
    step: int = 0
    labeled: DataPosition = field(default_factory=DataPosition)
    unlabeled: DataPosition = field(default_factory=DataPosition)
    updates: int = 0  # optimizer steps taken, never re-counted: turns and checkpoint names
    kappa_history: list[dict[str, Any]] = field(default_factory=list)
    best_dev_wer: float = float("inf")
    skipped_steps: int = 0

    def hours_seen(self, labeled_epoch_hours: float, unlabeled_epoch_hours: float) -> float:
        """Exact audio hours consumed by all ranks, from the global data positions."""
        hours = self.labeled.epoch * labeled_epoch_hours + self.labeled.seconds / 3600
        return hours + self.unlabeled.epoch * unlabeled_epoch_hours + self.unlabeled.seconds / 3600


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


# ----------------------------------------------------------------------------------------------
# The run


def train(cfg: DictConfig, *, dry_run: bool = False) -> int:
    rt = setup_runtime(cfg)
    hp = scaling.derive(cfg, world_size=rt.world_size)
    log(rt, to_yaml(cfg))
    log(rt, scaling.scaling_report(hp, cfg))
    if dry_run:
        return 0
    indices = load_splits(cfg)  # a wrong shards_dir or split name fails before anything is written

    exp_dir = Path(cfg.train.exp_dir)
    ckpt_dir = exp_dir / "checkpoints"

    # --- what to continue from: this run's last checkpoint, else train.init_from ------------
    payload, own_checkpoint = None, cfg.train.resume and (ckpt_dir / "last.pt").exists()
    if own_checkpoint:
        payload = load_checkpoint(ckpt_dir / "last.pt")
    elif cfg.train.init_from:
        payload = load_checkpoint(resolve_checkpoint(cfg.train.init_from))
    if payload is not None:  # checked before config.yaml is replaced: a refused resume changes nothing
        saved_cfg = config_from_dict(payload["config"])
        check_compatible(saved_cfg, cfg)
    if rt.is_main:
        exp_dir.mkdir(parents=True, exist_ok=True)
        (exp_dir / "config.yaml").write_text(to_yaml(cfg))
    torch.manual_seed(cfg.train.seed)

    # --- tokenizer, model, features, optimizer, teacher --------------------------------------
    tokenizer = tokenizer_from_dict(payload["tokenizer"]) if payload else prepare_tokenizer(cfg, exp_dir, rt)
    model = build_model(cfg.model, n_mels=cfg.features.n_mels, vocab_size=tokenizer.vocab_size).to(rt.device)
    features = LogMelFeatures(cfg.features.sample_rate, cfg.features.n_mels, cfg.features.win_ms,
                              cfg.features.hop_ms, cfg.features.normalize).to(rt.device)
    specaug = SpecAugment.from_config(cfg.specaug).to(rt.device)
    torch.manual_seed(cfg.train.seed + 1 + rt.rank)  # same init on every rank, own dropout masks
    aug_generator = torch.Generator(rt.device).manual_seed(cfg.train.seed * 1000 + rt.rank)
    optimizer = build_optimizer(cfg.optim.name, list(model.parameters()), hp, rt.device)
    log(rt, f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
            f"{tokenizer.identity()['kind']} tokenizer ({tokenizer.vocab_size} classes), device {rt.device}, "
            f"world size {rt.world_size}, precision {rt.autocast_dtype or torch.float32}")

    state, teacher = TrainState(), None
    if payload is not None:
        model.load_state_dict(payload["student"])
        optimizer.load_state_dict(payload["optimizer"])
        if payload["teacher"] is not None:
            teacher = EMATeacher(model)
            teacher.load_state_dict(payload["teacher"])
        state = load_train_state(payload["train_state"])
        if not own_checkpoint:
            state.best_dev_wer = float("inf")  # a new run: its own best
        if state.kappa_history:  # the checkpoint's steps ran at the batch it last recorded
            last = state.kappa_history[-1]
            saved_hp = scaling.derive(saved_cfg, int(last["world_size"]), int(last["accum_steps"]))
            if saved_hp.clock != hp.clock:  # another world size or accumulation: its steps stood
                # for other amounts of audio; every schedule continues at the same audio seen
                state.step = hp.clock.steps_at(saved_hp.clock.hours_at(state.step))
            hp = scaling.derive_at_hours(cfg, rt.world_size, hp.clock.hours_at(state.step))
            if hp.kappa != saved_hp.kappa:  # the optimizer state to what the new kappa would hold
                rescale_optimizer_state(optimizer, saved_hp, hp)
        log(rt, f"continuing at step {state.step} from "
                f"{ckpt_dir / 'last.pt' if own_checkpoint else cfg.train.init_from}")
    if teacher is not None and cfg.pl.enabled and state.step >= hp.steps.pl_start:
        model.set_dropout(*pl_dropout(cfg))

    # eager: torch.compile(dynamic=True) of this model fails in inductor with torch 2.11
    # (docs/PERFORMANCE.md); checkpoints always save the bare `model`
    student = model
    if rt.world_size > 1:  # LayerDrop leaves parameters without gradients on some steps
        student = DDP(student, find_unused_parameters=max(cfg.model.layerdrop, cfg.pl.layerdrop or 0) > 0)

    # --- data ----------------------------------------------------------------------------------
    loader_args = {"rank": rt.rank, "world_size": rt.world_size, "pin_memory": rt.device.type == "cuda"}
    labeled_loader = BatchLoader.from_config(indices[cfg.data.train_split], cfg.data,
                                             start=state.labeled, **loader_args)
    unlabeled_loader = None
    if cfg.pl.enabled:
        unlabeled_loader = BatchLoader.from_config(indices[cfg.data.unlabeled_split], cfg.data,
                                                   start=state.unlabeled, **loader_args)
    epoch_hours = (labeled_loader.hours_per_epoch, unlabeled_loader.hours_per_epoch if unlabeled_loader else 0.0)
    dev_indices = {name: indices[name] for name in cfg.data.dev_splits}
    labeled_batches = iter(labeled_loader)
    unlabeled_batches = iter(unlabeled_loader) if unlabeled_loader else None
    log(rt, f"data: {cfg.data.train_split} {epoch_hours[0]:.2f} h an epoch"
            + (f", {cfg.data.unlabeled_split} {epoch_hours[1]:.2f} h an epoch" if unlabeled_loader else ""))

    writer = RunLog(exp_dir) if rt.is_main else None

    stop_step = hp.clock.steps_at(cfg.train.stop_hours) if cfg.train.stop_hours else hp.steps.total
    stop_step = min(stop_step, hp.steps.total)
    if payload is not None:  # last: building the loaders above must not shift any RNG stream
        set_rng_state(payload["rng"][rt.rank % len(payload["rng"])], rt.device)
        aug_generator.set_state(payload["aug_generator"][rt.rank % len(payload["aug_generator"])])
    payload = None

    # --- the loop ------------------------------------------------------------------------------
    meter = Meter(rt.device, rt.world_size)
    # skipped (non-finite) steps, counted on the device and read at the logging cadence: the
    # current run of consecutive ones, the longest run since the last read, and the total
    nonfinite_run = torch.zeros((), device=rt.device)
    nonfinite_longest = torch.zeros((), device=rt.device)
    skipped_total = torch.full((), float(state.skipped_steps), device=rt.device)

    def checkpoint(is_best: bool = False) -> None:
        state.skipped_steps = int(skipped_total.item())  # exact also between logging steps
        save(rt, ckpt_dir, cfg, model, teacher, optimizer, state, tokenizer, aug_generator, is_best=is_best)

    t_start, step_at_start = time.perf_counter(), state.step
    hours_at_start = state.hours_seen(*epoch_hours)
    next_eval = next_mark(hp.clock.hours_at(state.step), cfg.train.eval_every_hours)
    next_ckpt = next_mark(hp.clock.hours_at(state.step), cfg.train.checkpoint_every_hours)
    while state.step < stop_step:
        # progressive scaling: a new accumulation stage re-derives kappa and every scaled value
        stage = hp.clock.stage_at_step(state.step)
        if cfg.scaling.progressive and cfg.scaling.progressive[stage].accum_steps != hp.accum_steps:
            new_hp = scaling.derive(cfg, rt.world_size, int(cfg.scaling.progressive[stage].accum_steps))
            rescale_optimizer_state(optimizer, hp, new_hp)
            hp = new_hp
            state.kappa_history.append(kappa_record(state.step, hp))
            log(rt, f"step {state.step}: progressive stage {stage}: accum {hp.accum_steps}, "
                    f"kappa {hp.kappa:g}, lr {hp.lr:.3g}, rho {hp.rho:.6f}")
        if not state.kappa_history or not same_scale(state.kappa_history[-1], hp):
            state.kappa_history.append(kappa_record(state.step, hp))
        apply_hyperparameters(optimizer, hp, lr_at(state.step, hp, cfg))

        in_pl = cfg.pl.enabled and state.step >= hp.steps.pl_start
        if teacher is None and (cfg.ema.start == "step0" or in_pl):
            teacher = EMATeacher(model)  # a copy of the student as it is now
            log(rt, f"step {state.step}: teacher created")
        if in_pl and state.step == hp.steps.pl_start:
            model.set_dropout(*pl_dropout(cfg))
        augment = specaug if state.step >= hp.steps.specaug_start else None

        # a whole update is labeled or pseudo-labeled (slimIPL's alternation), so a step has the
        # same content at any split of kappa into ranks x accumulation
        use_unlabeled = in_pl and is_unlabeled_turn(state.updates, cfg.pl.unlabeled_per_labeled)

        # micro-steps: gradients are averaged across ranks on the last one only
        student.train()
        model.set_layerdrop_seed(cfg.train.seed * 1_000_003 + state.updates)
        for micro in range(hp.accum_steps):
            batch = next(unlabeled_batches if use_unlabeled else labeled_batches)
            if use_unlabeled:
                state.unlabeled = batch.position
            else:
                state.labeled = batch.position
            last = micro == hp.accum_steps - 1
            with contextlib.nullcontext() if last or rt.world_size == 1 else student.no_sync():
                loss = micro_step(student, teacher, batch, use_unlabeled, tokenizer, features, augment,
                                  aug_generator, rt, cfg, meter)
                (loss / hp.accum_steps).backward()

        # clip, then step; a non-finite gradient skips the update on the device (no host sync):
        # fused optimizers read found_inf exactly as under torch.amp.GradScaler
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        found_inf = (~torch.isfinite(grad_norm)).float()
        optimizer.grad_scale, optimizer.found_inf = None, found_inf
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        nonfinite_run = (nonfinite_run + 1) * found_inf
        nonfinite_longest = torch.maximum(nonfinite_longest, nonfinite_run)
        skipped_total += found_inf
        meter.add_step(grad_norm, found_inf)
        if teacher is not None:  # once per optimizer step, never per micro-batch; held on a skip
            teacher.update(model, torch.where(found_inf > 0, 1.0, hp.rho))
        state.step += 1
        state.updates += 1

        # log, evaluate, checkpoint: cadences in hours of audio, read off the step clock
        hours = hp.clock.hours_at(state.step)
        if state.step % cfg.train.log_every_steps == 0 or state.step == stop_step:
            stats = meter.flush()
            elapsed = time.perf_counter() - t_start
            seen = state.hours_seen(*epoch_hours)
            rate = (seen - hours_at_start) / max(elapsed / 3600, 1e-9)
            eta = (stop_step - state.step) * elapsed / max(state.step - step_at_start, 1)
            log(rt, f"step {state.step}/{stop_step} | {seen:.2f} h seen | loss {stats['loss']:.3f}"
                    + (f" | pl-loss {stats['pl_loss']:.3f}" if stats["pl_batches"] else "")
                    + f" | lr {optimizer.param_groups[0]['lr']:.2e} | kappa {hp.kappa:g}"
                    + (f" | rho {hp.rho:.5f}" if teacher is not None else "")
                    + f" | {rate:.0f} audio-h/h | ETA {format_seconds(eta)}")
            if writer is not None:
                writer.write("train", state.step, seen, {
                    **stats, "lr": optimizer.param_groups[0]["lr"], "kappa": hp.kappa,
                    "rho": hp.rho if teacher is not None else float("nan"), "audio_hours_per_hour": rate})
            longest = int(nonfinite_longest.item())  # a run may have ended since the last read
            nonfinite_longest.zero_()
            if longest >= cfg.train.max_nonfinite_in_row:
                checkpoint()
                if writer is not None:
                    writer.close()
                raise RuntimeError(
                    f"{longest} optimizer steps in a row had a non-finite loss or gradient "
                    f"(train.max_nonfinite_in_row={cfg.train.max_nonfinite_in_row}); "
                    f"stopped, state saved in {ckpt_dir / 'last.pt'}")
            if cfg.train.max_minutes and stop_requested(rt, elapsed / 60 > cfg.train.max_minutes):
                log(rt, f"wall-clock budget of {cfg.train.max_minutes:g} min spent: stopping")
                break
        is_best = False
        if reached(hours, next_eval) and state.step < stop_step:
            next_eval = next_mark(hours, cfg.train.eval_every_hours)
            is_best = evaluate_dev(rt, cfg, model, teacher, features, dev_indices, tokenizer, state, writer,
                                   state.hours_seen(*epoch_hours))
        if (is_best or reached(hours, next_ckpt)) and state.step < stop_step:  # one save for both
            next_ckpt = next_mark(hours, cfg.train.checkpoint_every_hours)
            checkpoint(is_best)

    # --- the end -------------------------------------------------------------------------------
    is_best = bool(cfg.train.eval_every_hours) and evaluate_dev(
        rt, cfg, model, teacher, features, dev_indices, tokenizer, state, writer, state.hours_seen(*epoch_hours))
    checkpoint(is_best)
    log(rt, f"done: step {state.step}, {state.hours_seen(*epoch_hours):.2f} h of audio seen, "
            f"{state.skipped_steps} skipped steps, {time.perf_counter() - t_start:.0f} s; "
            f"checkpoints in {ckpt_dir}")
    if writer is not None:
        writer.close()
    if rt.world_size > 1:
        # DDP's reducer holds the process group: drop it first, so that destroy_process_group
        # frees the group (with the GIL released). Freed by the reducer, with the GIL held, a
        # gloo group waits for its worker thread, which may need the GIL to free a finished
        # collective's tensors: a deadlock at exit, seen about once in twenty runs.
        del student
        dist.barrier()
        dist.destroy_process_group()
    return 0


def pl_dropout(cfg: DictConfig) -> tuple[float, float]:
    """Dropout and LayerDrop of the pseudo-label phase (the model's own where not set)."""
    return (cfg.model.dropout if cfg.pl.dropout is None else cfg.pl.dropout,
            cfg.model.layerdrop if cfg.pl.layerdrop is None else cfg.pl.layerdrop)


def kappa_record(step: int, hp: scaling.Derived) -> dict[str, Any]:
    return {"step": step, "kappa": hp.kappa, "world_size": hp.world_size, "accum_steps": hp.accum_steps,
            "lr": hp.lr, "rho": hp.rho}


def same_scale(record: dict[str, Any], hp: scaling.Derived) -> bool:
    """Whether a kappa_history record describes the batch of ``hp`` (kappa, ranks, accumulation)."""
    return all(record[key] == value for key, value in kappa_record(record["step"], hp).items())


def stop_requested(rt: Runtime, local: bool) -> bool:
    """All ranks stop together when any asks to (a collective only at the logging cadence)."""
    if rt.world_size == 1:
        return local
    flag = torch.tensor([float(local)], device=rt.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def micro_step(student: torch.nn.Module, teacher: EMATeacher | None, batch: Batch, unlabeled: bool,
               tokenizer: Tokenizer, features: LogMelFeatures, specaug: SpecAugment | None,
               generator: torch.Generator, rt: Runtime, cfg: DictConfig, meter: Meter) -> torch.Tensor:
    """Loss of one micro-batch: against its transcripts, or against the teacher's greedy ones."""
    batch = batch.to(rt.device)
    with torch.no_grad():  # fp32 features on the device, outside autocast
        feats, feat_lengths = features(batch.waves, batch.lengths)
    autocast = torch.autocast(rt.device.type, dtype=rt.autocast_dtype, enabled=rt.autocast_dtype is not None)
    out_lengths = unwrap_model(student).output_lengths(feat_lengths)
    if unlabeled:
        assert teacher is not None
        with autocast:  # the teacher: eval mode, clean input, no gradients
            teacher_log_probs, teacher_lengths = teacher(feats, feat_lengths)
        labels = make_pseudo_labels(teacher_log_probs, teacher_lengths, out_lengths,
                                    blank_id=tokenizer.blank_id, min_tokens=cfg.pl.min_tokens,
                                    min_confidence=cfg.pl.min_confidence)
        targets, target_lengths, keep = labels.targets, labels.target_lengths, labels.keep
        meter.add_pseudo_labels(labels.reason_counts)
        if batch.truths is not None and all(t is not None for t in batch.truths):  # quality only
            hyps = [tokenizer.decode(ids) for ids in labels.token_lists()]
            meter.add_pl_wer(*pseudo_label_wer(hyps, batch.truths))
    else:
        targets, target_lengths, min_frames = encode_targets(batch.texts, tokenizer, rt.device)
        keep = min_frames <= out_lengths  # a transcript CTC cannot align is dropped, not fatal
    if specaug is not None:
        feats = specaug(feats, feat_lengths, generator=generator)
    with autocast:
        log_probs, out_lengths = student(feats, feat_lengths)
    loss = ctc_loss(log_probs, out_lengths, targets, target_lengths, keep)
    meter.add_loss(loss.detach(), unlabeled, batch.seconds, batch.padded_seconds)
    return loss * (cfg.pl.unlabeled_weight if unlabeled else 1.0)


def ctc_loss(log_probs: torch.Tensor, out_lengths: torch.Tensor, targets: torch.Tensor,
             target_lengths: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean per-utterance CTC loss (summed over frames) over the kept utterances."""
    per_utt = F.ctc_loss(log_probs.float().transpose(0, 1), targets, out_lengths, target_lengths,
                         blank=0, reduction="none", zero_infinity=False)
    per_utt = torch.where(keep, per_utt, torch.zeros_like(per_utt))
    return per_utt.sum() / keep.sum().clamp(min=1)


def encode_targets(texts: list[str], tokenizer: Tokenizer, device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Padded token ids [B, S], lengths [B], and the fewest CTC frames each needs (tokens + repeats)."""
    ids = [tokenizer.encode(t) for t in texts]
    lengths = [len(x) for x in ids]
    repeats = [sum(a == b for a, b in itertools.pairwise(x)) for x in ids]
    padded = torch.zeros(len(ids), max(max(lengths), 1), dtype=torch.long)
    for row, x in enumerate(ids):
        padded[row, : len(x)] = torch.tensor(x, dtype=torch.long)
    lengths_t = torch.tensor(lengths, dtype=torch.long)
    min_frames = lengths_t + torch.tensor(repeats, dtype=torch.long)
    min_frames[lengths_t == 0] = 1 << 30  # an empty transcript teaches nothing: dropped
    return (padded.to(device, non_blocking=True), lengths_t.to(device, non_blocking=True),
            min_frames.to(device, non_blocking=True))


def evaluate_dev(rt: Runtime, cfg: DictConfig, model: torch.nn.Module, teacher: EMATeacher | None,
                 features: LogMelFeatures, dev_indices: dict, tokenizer: Tokenizer, state: TrainState,
                 writer: RunLog | None, hours: float) -> bool:
    """Greedy dev WER of student and teacher; returns True when the student's is a new best."""
    line, first_wer, values = [], None, {}
    for label, net in (("student", model), ("teacher", teacher.module if teacher else None)):
        if net is None:
            continue
        for name, index in dev_indices.items():
            wer = dev_wer(net, features, index, tokenizer, rt.device, rank=rt.rank,
                          world_size=rt.world_size, batch_seconds=cfg.eval.batch_seconds,
                          autocast_dtype=rt.autocast_dtype)
            line.append(f"{label} {name} {100 * wer:.2f}")
            values[f"{label}/{name}"] = 100 * wer
            if first_wer is None:
                first_wer = wer
    log(rt, f"dev WER % at step {state.step}: " + " | ".join(line))
    if writer is not None:
        writer.write("dev_wer", state.step, hours, values)
    if first_wer is not None and first_wer < state.best_dev_wer:
        state.best_dev_wer = first_wer
        return True
    return False


# ----------------------------------------------------------------------------------------------
# Checkpoints


def save(rt: Runtime, ckpt_dir: Path, cfg: DictConfig, model: torch.nn.Module, teacher: EMATeacher | None,
         optimizer: torch.optim.Optimizer, state: TrainState, tokenizer: Tokenizer,
         aug_generator: torch.Generator, is_best: bool = False) -> None:
    """Rank 0 writes; every rank's RNG states are gathered so each resumes its own stream."""
    rngs, gens = [rng_state(rt.device)], [aug_generator.get_state().cpu()]
    if rt.world_size > 1:
        all_rngs: list[Any] = [None] * rt.world_size
        all_gens: list[Any] = [None] * rt.world_size
        dist.all_gather_object(all_rngs, rngs[0])
        dist.all_gather_object(all_gens, gens[0])
        rngs, gens = all_rngs, all_gens
    if not rt.is_main:
        return
    payload = {
        "student": model.state_dict(),
        "teacher": teacher.state_dict() if teacher is not None else None,
        "optimizer": optimizer.state_dict(),
        "train_state": dump_train_state(state),
        "rng": rngs,
        "aug_generator": gens,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "tokenizer": tokenizer.to_dict(),
    }
    save_checkpoint(payload, ckpt_dir, state.updates, keep_last=cfg.train.keep_last, is_best=is_best)


def dump_train_state(state: TrainState) -> dict[str, Any]:
    return {
        "step": state.step, "updates": state.updates,
        "labeled": state.labeled.state_dict(), "unlabeled": state.unlabeled.state_dict(),
        "kappa_history": state.kappa_history, "best_dev_wer": state.best_dev_wer,
        "skipped_steps": state.skipped_steps,
    }


def load_train_state(d: dict[str, Any]) -> TrainState:
    return TrainState(
        step=d["step"], updates=d["updates"],
        labeled=DataPosition.from_state_dict(d["labeled"]),
        unlabeled=DataPosition.from_state_dict(d["unlabeled"]),
        kappa_history=list(d["kappa_history"]), best_dev_wer=d["best_dev_wer"],
        skipped_steps=d["skipped_steps"],
    )


def check_compatible(saved: DictConfig, cfg: DictConfig) -> None:
    """Resuming needs the same model, tokenizer and features; everything else may change."""
    for section in ("model", "tokenizer", "features"):
        old = OmegaConf.to_container(saved[section])
        new = OmegaConf.to_container(cfg[section])
        diff = {k: (old.get(k), new.get(k)) for k in set(old) | set(new)
                if old.get(k) != new.get(k) and k not in ("dropout", "layerdrop", "path")}
        if diff:
            raise ValueError(f"cannot resume: {section} differs from the checkpoint's config: "
                             + ", ".join(f"{section}.{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(diff.items())))


# ----------------------------------------------------------------------------------------------
# Small helpers


def next_mark(hours: float, every: float) -> float:
    """The next multiple of ``every`` hours strictly after ``hours`` (inf when disabled)."""
    return (math.floor(hours / every + 1e-9) + 1) * every if every > 0 else float("inf")


def reached(hours: float, mark: float) -> bool:
    """``hours >= mark``, forgiving float noise: 9 steps of 15 s are 0.0375 h, 3 x 0.0125 h a
    hair more."""
    return hours >= mark * (1 - 1e-9)


def format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


if __name__ == "__main__":  # pragma: no cover - use `asr train`
    sys.exit("use: asr train --config FILE [key=value ...]")
