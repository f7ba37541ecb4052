"""The training loop on several ranks (gloo on CPU): identical replicas, the scaling rule
across (ranks x accumulation), and resuming on another number of ranks.

Each rank is a forked process that joins a gloo group and calls ``asr.train.train`` as
torchrun would have it. Every rank records what it read (the keys of each micro-batch) and
the weights it held at each checkpoint, so the replicas can be compared with each other.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import hours
from omegaconf import OmegaConf

import asr.step
import asr.train
from asr import scaling
from asr.checkpoint import load_checkpoint
from asr.config import config_from_dict
from asr.data.sampler import EpochPlan, EpochPlanner
from asr.data.shards import SplitIndex, load_index
from asr.train import train

# torch.optim imports torch._dynamo on first use, which takes seconds: import it once here, so
# that the forked ranks inherit it instead of each importing it again
importlib.import_module("torch._dynamo")


def _rank_main(rank: int, world_size: int, cfg: dict, init_file: str, out_dir: str) -> None:
    """One rank: the torchrun environment, a gloo group, recording hooks, then ``train``."""
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    if world_size > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                world_size=world_size, timeout=datetime.timedelta(seconds=60))
    out = Path(out_dir)
    reads = (out / f"reads-rank{rank}.jsonl").open("a")
    micro_batch_loss, save = asr.step.micro_batch_loss, asr.train.save

    def recording_micro_batch_loss(parts, batch, *, unlabeled, **kwargs):
        reads.write(json.dumps({"keys": batch.keys, "epoch": batch.epoch, "duplicate": batch.duplicate,
                                "unlabeled": unlabeled}) + "\n")
        return micro_batch_loss(parts, batch, unlabeled=unlabeled, **kwargs)

    def recording_save(run, *args, **kwargs):
        teacher = run.parts.teacher
        weights = {"student": run.parts.model.state_dict(), "teacher": teacher.state_dict() if teacher else None}
        torch.save(weights, out / f"weights-ws{world_size}-rank{rank}-step{run.state.step:03d}.pt")
        return save(run, *args, **kwargs)

    asr.step.micro_batch_loss, asr.train.save = recording_micro_batch_loss, recording_save
    try:
        train(config_from_dict(cfg))
    finally:
        reads.close()


def run_ranks(cfg, world_size: int, out_dir: Path, timeout_s: float = 120.0) -> None:
    """Train ``cfg`` on ``world_size`` forked ranks, recording into ``out_dir`` (a new folder
    per run: it also holds the group's rendezvous file). An exception on any rank fails the
    test, and so does a rank still running after ``timeout_s`` (a hang), which is killed."""
    out_dir.mkdir(parents=True)
    ranks = mp.start_processes(_rank_main, args=(world_size, OmegaConf.to_container(cfg), str(out_dir / "rendezvous"),
                                                 str(out_dir)), nprocs=world_size, join=False, start_method="fork")
    deadline = time.monotonic() + timeout_s
    while not ranks.join(timeout=1):
        if time.monotonic() > deadline:
            for process in ranks.processes:
                if process.is_alive():
                    process.kill()
            pytest.fail(f"{world_size} rank(s) still running after {timeout_s:g} s: a hang")


def final_weights(out_dir: Path, world_size: int, rank: int) -> dict:
    return torch.load(sorted(out_dir.glob(f"weights-ws{world_size}-rank{rank}-*.pt"))[-1], weights_only=True)


def reads(out_dir: Path, rank: int) -> list[dict]:
    path = out_dir / f"reads-rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def train_rows(exp_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (exp_dir / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if row["kind"] == "train"]


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# ----------------------------------------------------------------------------------------------


def test_two_ranks_finish_with_identical_students_and_teachers(make_config, tmp_path):
    """DDP keeps the students identical; identical updates keep the (unwrapped) teachers so."""
    cfg = make_config("ddp", f"schedule.total_hours={hours(6, kappa=2)}", f"pl.start_hours={hours(2, kappa=2)}")
    out = tmp_path / "ranks"
    run_ranks(cfg, 2, out)

    rank0, rank1 = final_weights(out, 2, 0), final_weights(out, 2, 1)
    assert rank0["teacher"] is not None
    assert_same_tensors(rank0["student"], rank1["student"])
    assert_same_tensors(rank0["teacher"], rank1["teacher"])
    saved = load_checkpoint(Path(cfg.train.exp_dir) / "checkpoints" / "last.pt")
    assert saved["train_state"]["step"] == 6
    assert_same_tensors(saved["teacher"], rank0["teacher"])
    # each rank read its own micro-batches: never the same utterance in one round
    for a, b in zip(reads(out, 0), reads(out, 1), strict=True):
        assert a["unlabeled"] == b["unlabeled"]  # both ranks take the same stream in a round
        assert not set(a["keys"]) & set(b["keys"]) or a["duplicate"] or b["duplicate"]


def test_one_rank_accumulating_two_matches_two_ranks(make_config, tiny_corpus, tmp_path):
    """1 rank x accum 2 and 2 ranks x accum 1 have the same kappa, the same effective values,
    and (with the same micro-batches in each step by the loader's design) the same loss and
    teacher trajectories up to float32 rounding. The gradient is summed in another way
    (autograd's g0/2 + g1/2 against the all-reduce's (g0 + g1)/2); with two terms and an
    exact halving that is bitwise equal on gloo, but a backend that reduces in chunks or
    another order (NCCL; more ranks, where (a + b) + (c + d) != ((a + b) + c) + d) differs
    by ~1e-7 relative a step, which Adam's normalised steps carry into the weights: hence
    rtol 1e-5 on losses and 1e-4 on weights over five steps. Dropout, SpecAugment and
    pseudo-labels are off: their random draws and the turns of the two streams depend on
    the rank layout by design (every rank of a round takes the same stream)."""
    common = ["model.dropout=0", "model.attention_dropout=0", "specaug.policy=none", "pl.enabled=false",
              "ema.start=step0", f"schedule.total_hours={hours(5, kappa=2)}", f"schedule.warmup_hours={hours(2, kappa=2)}"]
    accumulating = make_config("accum", *common, "train.accum_steps=2")
    two_ranks = make_config("ranks", *common)
    a, b = scaling.derive(accumulating, world_size=1), scaling.derive(two_ranks, world_size=2)
    for field in ("kappa", "lr", "betas", "eps", "rho", "steps", "clock", "global_batch_seconds"):
        assert getattr(a, field) == getattr(b, field), field
    assert (a.kappa, a.rho) == (2.0, pytest.approx(0.9**2))

    _, plan = train_plan(tiny_corpus.shards)
    assert len(plan) % 2 == 0 and 2 * a.steps.total <= 2 * len(plan), \
        "2 ranks match 1 rank over whole rounds only: epochs of an even number of micro-batches"

    run_ranks(accumulating, 1, tmp_path / "one")
    run_ranks(two_ranks, 2, tmp_path / "two")
    one_reads = reads(tmp_path / "one", 0)
    two_reads = [r for pair in zip(reads(tmp_path / "two", 0), reads(tmp_path / "two", 1), strict=True) for r in pair]
    assert [r["keys"] for r in one_reads] == [r["keys"] for r in two_reads]  # the same micro-batches

    rows_one, rows_two = train_rows(Path(accumulating.train.exp_dir)), train_rows(Path(two_ranks.train.exp_dir))
    assert [r["step"] for r in rows_one] == [r["step"] for r in rows_two] == [1, 2, 3, 4, 5]
    for r1, r2 in zip(rows_one, rows_two, strict=True):
        assert (r1["kappa"], r1["lr"], r1["rho"], r1["hours"]) == (r2["kappa"], r2["lr"], r2["rho"], r2["hours"])
        assert r1["loss"] == pytest.approx(r2["loss"], rel=1e-5)
        assert r1["grad_norm"] == pytest.approx(r2["grad_norm"], rel=1e-5)
    w1, w2 = final_weights(tmp_path / "one", 1, 0), final_weights(tmp_path / "two", 2, 0)
    for key in ("student", "teacher"):
        for name, tensor in w1[key].items():
            torch.testing.assert_close(w2[key][name], tensor, rtol=1e-4, atol=1e-6, msg=f"{key} {name}")


def train_plan(shards: Path) -> tuple[SplitIndex, EpochPlan]:
    """The labeled split and its epoch-0 plan under the tiny configs' data settings."""
    index = load_index(shards / "train-clean")
    planner = EpochPlanner(index.duration, max_batch_seconds=15.0, num_buckets=2, min_duration=0.5,
                           max_duration=15.0, seed=0)
    return index, planner(0)


def epoch_reads(records: list[dict], epoch: int) -> list[str]:
    """Utterance keys read in ``epoch``, padding repeats (which keep the ranks even) left out."""
    return [key for r in records if r["epoch"] == epoch and not r["duplicate"] for key in r["keys"]]


@pytest.mark.parametrize(("first", "then", "stop_steps", "resume_step"), [
    (2, 1, 2, 4),  # 2 steps of 30 s, then steps of 15 s from the 60 s mark: step 4
    (1, 2, 3, 2),  # 3 steps of 15 s, then steps of 30 s from the 45 s mark: step 2 (60 s, rounded up)
], ids=["2-ranks-then-1", "1-rank-then-2"])
def test_resume_on_another_number_of_ranks_keeps_the_data_position(make_config, tiny_corpus, tmp_path,
                                                                    first, then, stop_steps, resume_step):
    """A checkpoint of a W-rank run resumes on W' ranks: the epoch goes on with no utterance
    skipped or read twice, the schedules continue at the same audio seen (the step is
    re-counted at the new kappa), and kappa_history records both kappas."""
    common = ["pl.enabled=false"]
    run_ranks(make_config("run", *common, f"train.stop_hours={hours(stop_steps, kappa=first)}"),
              first, tmp_path / "first")
    stopped = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["train_state"]
    assert stopped["step"] == stop_steps
    assert stopped["labeled"]["batches"] == stop_steps * first  # a global count: W per round

    run_ranks(make_config("run", *common), then, tmp_path / "then")
    final = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["train_state"]
    history = [(r["step"], r["kappa"], r["world_size"]) for r in final["kappa_history"]]
    assert history == [(0, float(first), first), (resume_step, float(then), then)]
    assert final["step"] == scaling.derive(make_config("run"), world_size=then).steps.total

    records = [r for rank in range(first) for r in reads(tmp_path / "first", rank)]
    records += [r for rank in range(then) for r in reads(tmp_path / "then", rank)]
    index, plan = train_plan(tiny_corpus.shards)
    planned = [index.key(i) for k in range(len(plan)) for i in plan.batch(k).tolist()]
    assert sorted(epoch_reads(records, 0)) == sorted(planned)  # each utterance once
