"""The training loop on one process: exact resume, one teacher update per optimizer step,
non-finite steps skipped and counted, dry runs and bad configs that do no work."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import hours, tiny_overrides

import asr.step
from asr import scaling
from asr.checkpoint import list_checkpoints, load_checkpoint
from asr.cli import main
from asr.ema import EMATeacher, unwrap_model
from asr.metrics import WALL_CLOCK_KEYS
from asr.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


def train_rows(exp_dir: Path) -> list[dict]:
    """``metrics.jsonl`` rows of kind ``train``, without the wall-clock rate."""
    rows = [json.loads(line) for line in (exp_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in WALL_CLOCK_KEYS} for row in rows if row["kind"] == "train"]


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in unwrap_model(module).state_dict().items()}


# ----------------------------------------------------------------------------------------------
# Exact resume


def interrupt_and_resume(make_config, stop_step: int, *overrides: str) -> tuple[dict, dict]:
    """Train once straight through and once stopped after ``stop_step`` steps and resumed;
    return both runs' last checkpoints, having checked that they logged the same rows."""
    whole = make_config("whole", *overrides)
    train(whole)
    part = make_config("part", *overrides, f"train.stop_hours={hours(stop_step)}")
    train(part)
    assert load_checkpoint(Path(part.train.exp_dir) / "checkpoints" / "last.pt")["train_state"]["step"] == stop_step
    train(make_config("part", *overrides))

    expected, got = train_rows(Path(whole.train.exp_dir)), train_rows(Path(part.train.exp_dir))
    assert [row["step"] for row in got] == [row["step"] for row in expected]
    assert got == expected
    a = load_checkpoint(Path(whole.train.exp_dir) / "checkpoints" / "last.pt")
    b = load_checkpoint(Path(part.train.exp_dir) / "checkpoints" / "last.pt")
    assert_same_tensors(a["student"], b["student"])
    assert_same_tensors(a["teacher"], b["teacher"])
    for key in ("step", "updates", "labeled", "unlabeled", "kappa_history"):
        assert a["train_state"][key] == b["train_state"][key], key
    for state_a, state_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert_same_tensors(state_a, state_b)
    return a, b


@pytest.mark.parametrize("num_workers", [0, 1], ids=["in-process", "1-worker"])
def test_resume_after_interruption_is_bit_exact(make_config, num_workers):
    """Stopped at step 5 (inside the pseudo-label phase, with SpecAugment, dropout and a dev
    evaluation every 2 steps) and resumed, a run logs the same losses bit for bit as one that
    never stopped, and ends with the same student, teacher and optimizer."""
    whole, _ = interrupt_and_resume(make_config, 5, f"data.num_workers={num_workers}", "model.dropout=0.1",
                                    "specaug.policy=LD", f"train.eval_every_hours={hours(2)}")
    assert whole["train_state"]["step"] == 10
    assert whole["train_state"]["unlabeled"]["batches"] > 0  # the pseudo-label phase began at step 3


def test_resume_inside_a_later_progressive_stage_is_bit_exact(make_config):
    """Stage 2 (accum 2 from the 60 s mark: step 4) is under way at the stop: the resumed run
    continues at its kappa, and does not rescale the optimizer state a second time."""
    whole, _ = interrupt_and_resume(
        make_config, 5, f"scaling.progressive=[{{hours: 0, accum_steps: 1}}, {{hours: {hours(4)}, accum_steps: 2}}]")
    assert [(r["step"], r["kappa"]) for r in whole["train_state"]["kappa_history"]] == [(0, 1.0), (4, 2.0)]
    assert whole["train_state"]["step"] == 7  # 4 steps of 15 s, then 3 of 30 s: 150 s >= 0.0417 h


# ----------------------------------------------------------------------------------------------
# The EMA teacher


def test_teacher_updates_once_per_optimizer_step_under_accumulation(make_config, monkeypatch):
    """accum_steps=2: 5 optimizer steps of 2 micro-batches each; the teacher moves 5 times, each
    time towards the student *after* the step, at rho^kappa = 0.9^2."""
    cfg = make_config("accum", "train.accum_steps=2", "ema.start=step0")
    hp = scaling.derive(cfg, world_size=1)
    assert (hp.kappa, hp.steps.total) == (2.0, 5)

    micro_batches, updates, first_teacher = [], [], []
    original_micro_step, original_update = asr.step.micro_batch_loss, EMATeacher.update

    def counting_micro_step(*args, **kwargs):
        micro_batches.append(1)
        return original_micro_step(*args, **kwargs)

    def recording_update(self, student, rho):
        if not first_teacher:
            first_teacher.append(snapshot(self.module))
        updates.append((float(rho), len(micro_batches), snapshot(student)))
        return original_update(self, student, rho)

    monkeypatch.setattr(asr.step, "micro_batch_loss", counting_micro_step)
    monkeypatch.setattr(EMATeacher, "update", recording_update)
    train(cfg)

    assert len(micro_batches) == 10
    assert [(rho, seen) for rho, seen, _ in updates] == [(pytest.approx(0.81), 2 * k) for k in range(1, 6)]
    expected = first_teacher[0]
    for rho, _, student in updates:
        expected = {name: t * rho + student[name] * (1 - rho) if t.is_floating_point() else student[name]
                    for name, t in expected.items()}
    teacher = load_checkpoint(Path(cfg.train.exp_dir) / "checkpoints" / "last.pt")["teacher"]
    for name, value in expected.items():
        torch.testing.assert_close(teacher[name], value, rtol=1e-6, atol=1e-7, msg=name)


# ----------------------------------------------------------------------------------------------
# Non-finite steps


def poison_steps(monkeypatch, steps: set[int]) -> None:
    """Make the CTC loss NaN on the given optimizer steps (0-based; one micro-batch a step)."""
    calls = []
    original = asr.step.ctc_loss

    def ctc_loss(*args, **kwargs):
        loss = original(*args, **kwargs)
        calls.append(1)
        return loss * math.nan if len(calls) - 1 in steps else loss

    monkeypatch.setattr(asr.step, "ctc_loss", ctc_loss)


def record_after_each_step(monkeypatch) -> list[tuple[dict, dict, dict]]:
    """(student after the optimizer step, teacher before, teacher after) for every step."""
    records = []
    original = EMATeacher.update

    def update(self, student, rho):
        before = snapshot(self.module)
        original(self, student, rho)
        records.append((snapshot(student), before, snapshot(self.module)))

    monkeypatch.setattr(EMATeacher, "update", update)
    return records


def test_nonfinite_steps_are_skipped_and_counted(make_config, monkeypatch):
    """NaN losses at steps 2 and 5 (0-based): neither the student nor the teacher moves on
    them, the run goes on, and the count is exact in the logs and in every checkpoint, also
    in a checkpoint written between two logging steps."""
    poison_steps(monkeypatch, {2, 5})
    records = record_after_each_step(monkeypatch)
    cfg = make_config("nan", "ema.start=step0", "train.log_every_steps=4", "train.max_nonfinite_in_row=2")
    train(cfg)

    assert len(records) == 10
    for step, (student, teacher_before, teacher_after) in enumerate(records):
        skipped = step in (2, 5)
        assert same_tensors(teacher_after, teacher_before) == skipped, step
        if step > 0:
            assert same_tensors(student, records[step - 1][0]) == skipped, step

    rows = train_rows(Path(cfg.train.exp_dir))
    assert [row["step"] for row in rows] == [4, 8, 10]
    assert sum(row["skipped"] for row in rows) == 2
    ckpt_dir = Path(cfg.train.exp_dir) / "checkpoints"
    skipped = {int(p.stem.removeprefix("update-")): load_checkpoint(p)["train_state"]["skipped_steps"] for p in list_checkpoints(ckpt_dir)}
    assert skipped == {6: 2, 9: 2, 10: 2}


def test_too_many_nonfinite_steps_in_a_row_stop_the_run_with_a_checkpoint(make_config, monkeypatch):
    """Three NaN steps in a row (4, 5, 6) with max_nonfinite_in_row=3 stop the run at the next
    logging step (8), although step 7 was finite again, with the state saved."""
    poison_steps(monkeypatch, {4, 5, 6})
    cfg = make_config("nan-run", "train.log_every_steps=4", "train.max_nonfinite_in_row=3")
    with pytest.raises(RuntimeError, match=r"3 optimizer steps in a row .*train\.max_nonfinite_in_row=3"):
        train(cfg)
    last = load_checkpoint(Path(cfg.train.exp_dir) / "checkpoints" / "last.pt")
    assert (last["train_state"]["step"], last["train_state"]["skipped_steps"]) == (8, 3)
    assert [(row["step"], row["skipped"]) for row in train_rows(Path(cfg.train.exp_dir))] == [(4, 0), (8, 3)]
    for name, tensor in last["student"].items():
        assert torch.isfinite(tensor).all(), name


# ----------------------------------------------------------------------------------------------
# The command line: dry runs and bad configs do no work


def test_dry_run_prints_config_and_scaling_report_and_creates_nothing(tmp_path, capsys):
    exp_dir = tmp_path / "exp"
    argv = ["train", "--dry-run", *tiny_overrides(tmp_path / "no-shards", exp_dir), "train.accum_steps=2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"exp_dir: {exp_dir}" in out  # the resolved config
    assert "kappa = 2" in out  # the scaling report
    assert "| ema rho         | 0.9            | 0.81" in out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("override", "message"), [
    ("optim.lr=-1", "key 'optim.lr': got -1"),
    ("model.d_model=31", "key 'model.d_model': got 31, expected a multiple of model.num_heads (2)"),
    ("train.accum_step=2", "did you mean train.accum_steps"),
    ("ema.start=later", "key 'ema.start': got 'later', allowed values are pl_start, step0"),
    ("data.train_split=train-nowhere", "data.train_split: split 'train-nowhere' not found"),
    ("data.dev_splits=[dev-nowhere]", "data.dev_splits: split 'dev-nowhere' not found"),
])
def test_bad_config_fails_before_any_work(tiny_corpus, tmp_path, capsys, override, message):
    exp_dir = tmp_path / "exp"
    assert main(["train", *tiny_overrides(tiny_corpus.shards, exp_dir), override]) == 2
    assert message in capsys.readouterr().err
    assert not exp_dir.exists()


def test_resume_with_another_model_is_refused_naming_the_key(trained_run, tiny_corpus, capsys):
    cfg = [*tiny_overrides(tiny_corpus.shards, trained_run), "model.d_model=64", "model.num_heads=4"]
    assert main(["train", *cfg]) == 2
    assert "model.d_model: 32 -> 64" in capsys.readouterr().err
