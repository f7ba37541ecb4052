"""Checkpoints: atomic saves, pruning that keeps best.pt and last.pt valid, safe loading,
weight averaging, and the contract of what a trainer checkpoint holds."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

import asr.checkpoint
from asr.checkpoint import (
    average_state_dicts,
    list_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)


def payload(value: float) -> dict:
    return {"student": {"w": torch.full((2, 3), value), "steps": torch.tensor(int(value))}}


def saved_value(path: Path) -> float:
    return float(load_checkpoint(path)["student"]["w"][0, 0])


def test_save_interrupted_midway_leaves_no_partial_file(tmp_path, monkeypatch):
    save_checkpoint(payload(1.0), tmp_path, updates=1, keep_last=3)
    real_save = torch.save

    def crash_midway(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # bytes written, then the process is interrupted
        raise KeyboardInterrupt

    monkeypatch.setattr(asr.checkpoint.torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(payload(2.0), tmp_path, updates=2, keep_last=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "update-00000001.pt"]
    assert saved_value(tmp_path / "last.pt") == 1.0


@pytest.mark.parametrize(("keep_last", "best_step", "kept_steps"), [
    (1, 2, [5]),
    (2, 5, [4, 5]),
    (3, 1, [3, 4, 5]),
    (10, 3, [1, 2, 3, 4, 5]),
])
def test_keep_last_prunes_periodic_saves_and_keeps_best_and_last_valid(tmp_path, keep_last, best_step, kept_steps):
    for step in range(1, 6):
        save_checkpoint(payload(float(step)), tmp_path, updates=step, keep_last=keep_last, is_best=step == best_step)
    assert [int(p.stem.removeprefix("update-")) for p in list_checkpoints(tmp_path)] == kept_steps
    assert saved_value(tmp_path / "last.pt") == 5.0
    assert saved_value(tmp_path / "best.pt") == float(best_step)
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_loading_runs_no_code_from_the_file(tmp_path):
    """weights_only: tensors, containers and plain values load; a pickled object is refused."""
    save_checkpoint({**payload(1.0), "notes": ["plain", 1, 2.5, None], "config": {"a": {"b": [1]}}},
                    tmp_path, updates=1, keep_last=1)
    assert load_checkpoint(tmp_path)["notes"] == ["plain", 1, 2.5, None]
    save_checkpoint({**payload(1.0), "hook": Path("x")}, tmp_path, updates=2, keep_last=1)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_checkpoint(tmp_path)


def test_load_refuses_another_format_version(tmp_path):
    torch.save({"version": 0, **payload(1.0)}, tmp_path / "old.pt")
    with pytest.raises(ValueError, match=r"old\.pt: checkpoint format version 0, expected 1"):
        load_checkpoint(tmp_path / "old.pt")


def test_average_state_dicts_means_floats_in_their_dtype_and_keeps_integers_of_the_last(tmp_path):
    paths = []
    for step, (w, half, counter) in enumerate([(1.0, 0.5, 7), (2.0, 1.5, 8), (6.0, 4.0, 9)], start=1):
        state = {"w": torch.full((3,), w), "half": torch.full((2,), half, dtype=torch.bfloat16),
                 "double": torch.full((1,), w / 3, dtype=torch.float64), "counter": torch.tensor(counter)}
        paths.append(save_checkpoint({"student": state}, tmp_path, updates=step, keep_last=5))
    mean = average_state_dicts(paths, "student")
    assert torch.equal(mean["w"], torch.full((3,), 3.0))
    assert mean["half"].dtype == torch.bfloat16 and torch.equal(mean["half"], torch.full((2,), 2.0, dtype=torch.bfloat16))
    assert mean["double"].dtype == torch.float64 and mean["double"].item() == pytest.approx(1.0, rel=1e-15)
    assert torch.equal(mean["counter"], torch.tensor(9))


@pytest.mark.parametrize(("states", "message"), [
    ([], "needs at least one checkpoint"),
    ([{"w": torch.ones(2)}, None], "checkpoint has no 'student' weights"),
    ([{"w": torch.ones(2)}, {"w": torch.ones(2), "extra": torch.ones(1)}], r"other tensor names .*'extra'"),
])
def test_average_state_dicts_refuses_what_cannot_be_averaged(tmp_path, states, message):
    paths = [save_checkpoint({"student": state}, tmp_path, updates=step, keep_last=5)
             for step, state in enumerate(states, start=1)]
    with pytest.raises(ValueError, match=message):
        average_state_dicts(paths, "student")


@pytest.mark.parametrize(("given", "found"), [
    ("exp/checkpoints/update-00000003.pt", "exp/checkpoints/update-00000003.pt"),
    ("exp/checkpoints", "exp/checkpoints/last.pt"),
    ("exp", "exp/checkpoints/last.pt"),
])
def test_resolve_checkpoint_finds_the_file_of_a_folder(tmp_path, given, found):
    save_checkpoint(payload(3.0), tmp_path / "exp" / "checkpoints", updates=3, keep_last=1)
    assert resolve_checkpoint(tmp_path / given) == tmp_path / found


@pytest.mark.parametrize("given", ["missing.pt", "empty-folder"])
def test_resolve_checkpoint_names_what_it_expected(tmp_path, given):
    (tmp_path / "empty-folder").mkdir()
    with pytest.raises(FileNotFoundError, match=f"no checkpoint at .*{given} .*a .pt file or a folder with last.pt"):
        resolve_checkpoint(tmp_path / given)


def test_trainer_checkpoint_holds_everything_a_run_continues_from(trained_run):
    """The DESIGN contract: student, teacher, optimizer, step, data positions, RNG states,
    resolved config, kappa history and the tokenizer, in one weights_only file."""
    saved = load_checkpoint(trained_run)
    assert {"student", "teacher", "optimizer", "train_state", "rng", "aug_generator", "config",
            "tokenizer", "version"} <= saved.keys()
    state = saved["train_state"]
    assert state["step"] == 10
    assert state["labeled"]["plan"] and state["unlabeled"]["plan"]  # positions checked on resume
    assert state["kappa_history"] == [{"step": 0, "kappa": 1.0, "world_size": 1, "accum_steps": 1,
                                       "lr": 0.002, "rho": pytest.approx(0.9)}]
    assert saved["config"]["train"]["exp_dir"] == str(trained_run)
    assert saved["teacher"].keys() == saved["student"].keys()
    ckpt_dir = trained_run / "checkpoints"
    assert [p.name for p in list_checkpoints(ckpt_dir)] == ["update-00000006.pt", "update-00000009.pt", "update-00000010.pt"]
    assert load_checkpoint(ckpt_dir / "best.pt")["train_state"]["best_dev_wer"] < float("inf")
