"""Faults a cluster user meets, injected on purpose: kill -9 and SIGTERM (also under torchrun),
a stalled rank, corrupt and truncated shards, text outside the tokenizer, two trainers on one
folder, a full disk, and inputs that must be refused before any work. Each test states what
is kept and what is retried (README, "What happens when things fail")."""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import hours, tiny_overrides
from test_train import assert_same_tensors, train_rows

import asr.checkpoint
import asr.metrics
import asr.train
from asr.checkpoint import list_checkpoints, load_checkpoint
from asr.cli import main
from asr.data.bad_data import TooMuchBadData
from asr.data.sampler import EpochPlanner
from asr.data.shards import build_index, load_index, save_index
from asr.metrics import WALL_CLOCK_KEYS
from asr.plot import read_metrics
from asr.preemption import EXIT_PREEMPTED
from asr.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "fault_driver.py"
PYTHON = sys.executable


def last_state(exp_dir: Path) -> dict:
    return load_checkpoint(exp_dir / "checkpoints" / "last.pt")["train_state"]


def kept_rows(exp_dir: Path) -> list[dict]:
    """The train rows of the timeline kept (rows logged again after a resume replace the old)."""
    return [{k: v for k, v in row.items() if k not in WALL_CLOCK_KEYS}
            for row in read_metrics(exp_dir) if row["kind"] == "train"]


def assert_same_run(a: Path, b: Path) -> None:
    """Two experiment folders ended with the same weights, optimizer and logged rows."""
    assert kept_rows(a) == kept_rows(b)
    x, y = load_checkpoint(a / "checkpoints" / "last.pt"), load_checkpoint(b / "checkpoints" / "last.pt")
    assert_same_tensors(x["student"], y["student"])
    assert_same_tensors(x["teacher"], y["teacher"])
    for sa, sb in zip(x["optimizer"]["state"].values(), y["optimizer"]["state"].values(), strict=True):
        assert_same_tensors(sa, sb)


def copy_shards(shards: Path, into: Path) -> Path:
    shutil.copytree(shards, into)
    return into


def first_micro_batch(index) -> list[int]:
    """Members of the labeled split's first micro-batch under the tiny configs' data settings."""
    planner = EpochPlanner(index.duration, max_batch_seconds=15.0, num_buckets=2, min_duration=0.5,
                           max_duration=15.0, seed=0)
    return planner(0).batch(0).tolist()


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


# ----------------------------------------------------------------------------------------------
# Preemption: kill -9 and SIGTERM


def test_kill_9_at_random_steps_then_resume_is_bit_exact(make_config, tmp_path):
    """Killed twice without warning at random steps, the run resumes each time from its last
    periodic checkpoint and ends exactly as one that never stopped."""
    whole = make_config("whole")
    train(whole)
    part = make_config("part")
    overrides = tiny_overrides(Path(part.data.shards_dir), Path(part.train.exp_dir))
    last, done = Path(part.train.exp_dir) / "checkpoints" / "last.pt", 0
    for at in random.Random(17).sample(range(2, 6), 2):
        proc = subprocess.run([PYTHON, str(DRIVER), "--fault", "kill", "--at", str(at), *overrides],
                              env=env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        done = 3 * ((done + at) // 3)  # the last periodic checkpoint (every 3 steps) before the kill
        assert (load_checkpoint(last)["train_state"]["step"] if last.exists() else 0) == done
    assert train(part) == 0
    assert_same_run(Path(whole.train.exp_dir), Path(part.train.exp_dir))


def test_sigterm_saves_after_the_step_and_the_same_command_resumes_bit_exactly(make_config, monkeypatch):
    """SIGTERM during step 5 (of 10, checkpoints every 3): the step ends, one checkpoint of step
    5 is written, train returns EXIT_PREEMPTED; the same config then ends exactly as an
    uninterrupted run, with the logged rows of both equal."""
    whole = make_config("whole")
    train(whole)
    original, taken = asr.train.train_step, [0]

    def step_then_signal(*args, **kwargs):
        if taken[0] == 4:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives inside the step
        taken[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(asr.train, "train_step", step_then_signal)
    part = make_config("part")
    handler = signal.getsignal(signal.SIGTERM)
    assert train(part) == EXIT_PREEMPTED
    assert last_state(Path(part.train.exp_dir))["step"] == 5 and taken[0] == 5
    assert signal.getsignal(signal.SIGTERM) is handler  # put back
    monkeypatch.setattr(asr.train, "train_step", original)
    assert train(part) == 0
    assert_same_run(Path(whole.train.exp_dir), Path(part.train.exp_dir))


@pytest.mark.slow
def test_sigterm_to_torchrun_saves_one_consistent_checkpoint_and_resumes(make_config, tmp_path):
    """SIGTERM to torchrun (2 ranks, gloo): both ranks agree at a step boundary, rank 0 saves
    one checkpoint past the last periodic one, every worker exits EXIT_PREEMPTED; the same
    command then finishes the run, exactly as a run on 2 ranks that was never stopped."""
    from test_train_ddp import run_ranks

    common = [f"schedule.total_hours={hours(12, kappa=2)}", f"pl.start_hours={hours(3, kappa=2)}",
              f"train.checkpoint_every_hours={hours(100)}", "train.signal_check_steps=2"]
    whole = make_config("whole", *common)
    run_ranks(whole, 2, tmp_path / "ranks")
    cfg = make_config("part", *common)
    overrides = [*tiny_overrides(Path(cfg.data.shards_dir), Path(cfg.train.exp_dir)), *common]
    marker = tmp_path / "under-way"
    torchrun = [str(Path(PYTHON).parent / "torchrun"), "--nproc-per-node", "2", "--nnodes", "1",
                "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0", str(DRIVER)]
    proc = subprocess.Popen([*torchrun, "--fault", "slow", "--at", "3", "--marker", str(marker), *overrides],
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert "stopped by SIGTERM" in out and f"exit status {EXIT_PREEMPTED}" in out, out[-3000:]
    stopped = last_state(Path(cfg.train.exp_dir))["step"]
    assert 3 <= stopped < 12 and stopped % 2 == 0  # agreed at a check every 2 steps
    resumed = subprocess.run([*torchrun, "--fault", "slow", "--at", "99", "--sleep", "0", *overrides],
                             env=env(), capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert_same_run(Path(whole.train.exp_dir), Path(cfg.train.exp_dir))


# ----------------------------------------------------------------------------------------------
# A stalled rank


def _stalling_rank(rank: int, port: int, cfg: dict, out: str) -> None:
    """Rank 1 stops itself (SIGSTOP) as optimizer step 3 begins; rank 0 must not hang."""
    from omegaconf import OmegaConf

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    original, taken = asr.train.train_step, [0]

    def step(*args, **kwargs):
        if rank == 1 and taken[0] == 3:
            os.kill(os.getpid(), signal.SIGSTOP)
        taken[0] += 1
        return original(*args, **kwargs)

    asr.train.train_step = step
    try:
        train(OmegaConf.create(cfg))
    except RuntimeError as err:
        Path(out, f"error-rank{rank}.txt").write_text(str(err))
        raise


def test_a_stalled_rank_ends_the_job_naming_the_rank_and_the_step(make_config, tmp_path):
    """train.collective_timeout_s=3: rank 0 waits 3 s for the stopped rank 1, then fails with a
    message naming rank 1, the step, and the intact checkpoint; nothing hangs."""
    import socket

    import torch.multiprocessing as mp
    from omegaconf import OmegaConf

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = make_config("stall", "train.collective_timeout_s=3", f"train.checkpoint_every_hours={hours(2, kappa=2)}")
    ranks = mp.start_processes(_stalling_rank, args=(port, OmegaConf.to_container(cfg), str(tmp_path)),
                               nprocs=2, join=False, start_method="fork")
    error = tmp_path / "error-rank0.txt"
    deadline = time.monotonic() + 90
    while not error.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    for process in ranks.processes:
        process.kill()
    message = error.read_text()
    assert "rank 0: a collective failed or waited longer than train.collective_timeout_s=3 s" in message
    assert "after 3 optimizer steps" in message
    assert re.search(r"stopped responding: rank 1 \(last at step [23]\)", message), message
    assert last_state(Path(cfg.train.exp_dir))["step"] == 2  # the checkpoint on disk stays valid


# ----------------------------------------------------------------------------------------------
# Bad audio and bad text


def test_a_micro_batch_whose_audio_does_not_decode_is_skipped_counted_and_saved(make_config, tiny_corpus, tmp_path):
    """Every member of the labeled split's first micro-batch corrupt (the case of one long
    utterance alone in its batch): the run goes on, counts the skips per split in its log rows
    and checkpoint, and a resume sees the count."""
    shards = copy_shards(tiny_corpus.shards, tmp_path / "shards")
    index = load_index(shards / "train-clean")
    members = first_micro_batch(index)
    for i in members:
        with open(index.shard_path(i), "r+b") as f:
            f.seek(int(index.offset[i]))
            f.write(b"\0" * 64)
    cfg = make_config("bad-audio", f"data.shards_dir={shards}", "data.max_bad_fraction=0.5")
    assert train(cfg) == 0
    counts = last_state(Path(cfg.train.exp_dir))["bad_data"]["train-clean"]
    assert counts["skipped"] >= len(members) and counts["read"] > counts["skipped"]
    assert train_rows(Path(cfg.train.exp_dir))[-1]["skipped_utterances"] == counts["skipped"]


def test_two_ranks_stay_in_step_over_a_micro_batch_that_does_not_decode(make_config, tiny_corpus, tmp_path):
    from test_train_ddp import run_ranks

    shards = copy_shards(tiny_corpus.shards, tmp_path / "shards")
    index = load_index(shards / "train-clean")
    for i in first_micro_batch(index):
        with open(index.shard_path(i), "r+b") as f:
            f.seek(int(index.offset[i]))
            f.write(b"\0" * 64)
    cfg = make_config("bad-ddp", f"data.shards_dir={shards}", "data.max_bad_fraction=0.5",
                      f"schedule.total_hours={hours(4, kappa=2)}", f"pl.start_hours={hours(2, kappa=2)}")
    run_ranks(cfg, 2, tmp_path / "ranks", timeout_s=90)
    state = last_state(Path(cfg.train.exp_dir))
    assert state["step"] == 4 and state["bad_data"]["train-clean"]["skipped"] >= 1


def test_a_shard_truncated_to_half_is_skipped_and_too_much_bad_data_stops_clearly(make_config, tiny_corpus,
                                                                                  tmp_path):
    shards = copy_shards(tiny_corpus.shards, tmp_path / "shards")
    shard = sorted((shards / "train-clean").glob("shard-*.tar"))[1]
    os.truncate(shard, shard.stat().st_size // 2)
    ok = make_config("truncated", f"data.shards_dir={shards}", "data.max_bad_fraction=0.5")
    assert train(ok) == 0
    assert last_state(Path(ok.train.exp_dir))["bad_data"]["train-clean"]["skipped"] >= 1
    strict = make_config("strict", f"data.shards_dir={shards}", "data.max_bad_fraction=0.001")
    with pytest.raises(TooMuchBadData, match=r"split 'train-clean': \d+ of \d+ .*data.max_bad_fraction=0.001"):
        train(strict)


def test_a_transcript_outside_the_tokenizer_is_refused_up_front_naming_utterance_file_and_character(
        make_config, tiny_corpus, tmp_path, capsys):
    shards = copy_shards(tiny_corpus.shards, tmp_path / "shards")
    index = load_index(shards / "train-clean")
    texts = index.texts
    texts[5] = texts[5][:3] + "\u00c9" + texts[5][3:]
    columns = {name: getattr(index, name) for name in ("shard", "offset", "size", "duration", "num_samples")}
    save_index(build_index("train-clean", index.root, index.shard_names, keys=[index.key(i) for i in range(len(index))],
                           texts=texts, speakers=[index.speaker(i) for i in range(len(index))],
                           sample_rate=index.sample_rate, **columns))
    from asr.text.tokenizer import build_tokenizer

    build_tokenizer("letters", tmp_path / "tokenizer")  # built beforehand, as the recipes do
    exp_dir = tmp_path / "exp"
    assert main(["train", *tiny_overrides(shards, exp_dir), f"tokenizer.path={tmp_path / 'tokenizer'}"]) == 2
    err = capsys.readouterr().err
    assert f"utterance {index.key(5)} (in {index.shard_path(5)})" in err and "'É' (U+00C9)" in err
    assert not (exp_dir / "config.yaml").exists()


def test_a_labeled_split_without_transcripts_is_refused(tiny_corpus, tmp_path, capsys):
    exp_dir = tmp_path / "exp"
    argv = ["train", *tiny_overrides(tiny_corpus.shards, exp_dir), "pl.enabled=false", "data.train_split=train-unlabeled"]
    assert main(argv) == 2
    assert "data.train_split: split 'train-unlabeled'" in capsys.readouterr().err
    assert not exp_dir.exists()


def test_utterances_dropped_by_the_duration_filter_are_reported_with_counts(make_config, capsys):
    train(make_config("filtered", "data.min_duration=6.0", f"schedule.total_hours={hours(2)}", "schedule.warmup_hours=0",
                      f"pl.start_hours={hours(1)}"))
    out = capsys.readouterr().out
    assert "train-clean 0.01 h an epoch, 4 of 7 utterances (3 outside data.min_duration=6 s .. data.max_duration=15 s dropped)" in out


# ----------------------------------------------------------------------------------------------
# The experiment folder


def copy_run(trained_run: Path, into: Path) -> Path:
    shutil.copytree(trained_run, into)  # hard links become copies: each file its own
    return into


def test_a_second_trainer_on_the_same_folder_is_refused(tiny_corpus, trained_run, tmp_path, capsys):
    exp_dir = copy_run(trained_run, tmp_path / "exp")
    holder = subprocess.Popen([PYTHON, "-c", "import sys, time; from pathlib import Path; "
                               "from asr.experiment import ExperimentLock; ExperimentLock(Path(sys.argv[1])); "
                               "print('locked', flush=True); time.sleep(60)", str(exp_dir)],
                              env=env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["train", *tiny_overrides(tiny_corpus.shards, exp_dir), f"schedule.total_hours={hours(12)}"]) == 2
    finally:
        holder.kill()
        holder.wait()
    assert f"is in use by another trainer (pid {holder.pid}" in capsys.readouterr().err


def test_resume_false_in_a_used_folder_is_refused_and_changes_nothing(tiny_corpus, trained_run, tmp_path, capsys):
    exp_dir = copy_run(trained_run, tmp_path / "exp")
    before = {p: p.read_bytes() for p in exp_dir.rglob("*") if p.is_file()}
    assert main(["train", *tiny_overrides(tiny_corpus.shards, exp_dir), "train.resume=false"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in exp_dir.rglob("*") if p.is_file()} == before


def test_rerunning_a_finished_run_touches_nothing(tiny_corpus, trained_run, tmp_path, capsys):
    exp_dir = copy_run(trained_run, tmp_path / "exp")
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in exp_dir.rglob("*") if p.is_file()}
    assert main(["train", *tiny_overrides(tiny_corpus.shards, exp_dir), f"train.eval_every_hours={hours(3)}"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in exp_dir.rglob("*") if p.is_file()} == before


def test_a_refused_resume_leaves_config_yaml_as_it_was(tiny_corpus, trained_run, tmp_path, capsys):
    exp_dir = copy_run(trained_run, tmp_path / "exp")
    config = (exp_dir / "config.yaml").read_bytes()
    argv = ["train", *tiny_overrides(tiny_corpus.shards, exp_dir), f"schedule.total_hours={hours(12)}", "data.seed=5"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "another epoch plan" in err and "allow_" not in err
    assert (exp_dir / "config.yaml").read_bytes() == config


def test_a_truncated_last_pt_falls_back_to_the_newest_intact_checkpoint(tiny_corpus, trained_run, tmp_path, capsys):
    exp_dir = copy_run(trained_run, tmp_path / "exp")
    last = exp_dir / "checkpoints" / "last.pt"
    os.truncate(last, last.stat().st_size // 2)
    assert main(["train", *tiny_overrides(tiny_corpus.shards, exp_dir), f"schedule.total_hours={hours(12)}"]) == 0
    out = capsys.readouterr().out
    assert f"warning: {last} does not load" in out and "continuing at step 10 from" in out
    assert last_state(exp_dir)["step"] == 12


# ----------------------------------------------------------------------------------------------
# A full disk


def test_a_full_disk_at_a_periodic_checkpoint_keeps_the_previous_one_and_retries(make_config, monkeypatch, capsys):
    original, calls = asr.checkpoint.torch.save, []

    def save(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # the second periodic checkpoint (step 6)
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(obj, path, *args, **kwargs)

    monkeypatch.setattr(asr.checkpoint.torch, "save", save)
    cfg = make_config("full-disk")
    assert train(cfg) == 0
    assert "warning: the checkpoint of step 6 was not written ([Errno 28]" in capsys.readouterr().out
    ckpt_dir = Path(cfg.train.exp_dir) / "checkpoints"
    assert [p.name for p in list_checkpoints(ckpt_dir)] == ["update-00000003.pt", "update-00000009.pt",
                                                            "update-00000010.pt"]
    assert not [p for p in ckpt_dir.iterdir() if ".tmp-" in p.name]
    assert last_state(Path(cfg.train.exp_dir))["step"] == 10


def test_a_full_disk_under_metrics_jsonl_leaves_no_torn_line(make_config, monkeypatch, capsys):
    original, calls = asr.metrics.append_line, []

    def append_line(fd, data):
        calls.append(1)
        if len(calls) == 3:
            os.write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        original(fd, data)

    monkeypatch.setattr(asr.metrics, "append_line", append_line)
    cfg = make_config("full-log")
    assert train(cfg) == 0
    lines = (Path(cfg.train.exp_dir) / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 4, 5, 6, 7, 8, 9, 10]
    assert "row of step 3 was not written" in capsys.readouterr().err
    assert read_metrics(cfg.train.exp_dir)


def test_asr_plot_ignores_a_torn_last_line(tmp_path):
    rows = [{"kind": "train", "step": 1, "hours": 0.1, "loss": 3.0}, {"kind": "train", "step": 2, "hours": 0.2, "loss": 2.0}]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "metrics.jsonl").write_text(text + text.splitlines()[0][:20])
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]


# ----------------------------------------------------------------------------------------------
# Inputs refused before work


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("optim:\n  lr: 0.1\n  betas: [0.9, 0.98\n")
    assert main(["config", "--config", str(path)]) == 2
    assert f"{path}:4:1: YAML syntax error" in capsys.readouterr().err


@pytest.mark.parametrize(("overrides", "message"), [
    (["pl.start_hours=20"], "key 'pl.start_hours': got 20.0, expected hours < schedule.total_hours (10.0)"),
    (["scaling.progressive=[{hours: 0, accum_steps: 1}, {hours: 10, accum_steps: 2}]"], "scaling.progressive.1.hours"),
    (["train.stop_hours=11"], "key 'train.stop_hours': got 11.0, expected hours <= schedule.total_hours"),
])
def test_schedule_points_past_the_end_are_refused(overrides, message, capsys):
    assert main(["config", *overrides]) == 2
    assert message in capsys.readouterr().err


def test_the_recipes_warm_start_stop_at_the_pseudo_label_start_stays_valid(capsys):
    assert main(["config", "pl.enabled=false", "train.stop_hours=${pl.start_hours}"]) == 0


@pytest.mark.parametrize(("option", "value"), [("--batch-seconds", "0"), ("--batch-seconds", "-5"),
                                               ("--beam-size", "0"), ("--average-last", "0")])
def test_asr_eval_refuses_non_positive_values(option, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--checkpoint", str(tmp_path), "--data", str(tmp_path), "--out", str(tmp_path / "o"), option, value])
    assert exit_info.value.code == 2
    assert f"argument {option}: expected a positive" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_asr_eval_on_a_missing_gpu_is_one_clear_line(trained_run, tiny_corpus, tmp_path, capsys):
    argv = ["eval", "--checkpoint", str(trained_run), "--data", str(tiny_corpus.shards), "--split", "dev-clean",
            "--device", "cuda", "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert "device 'cuda': no CUDA device is visible" in capsys.readouterr().err


def test_a_bom_in_hypothesis_and_reference_files_is_not_part_of_the_first_id(tmp_path, capsys):
    ref, hyp = tmp_path / "ref.txt", tmp_path / "hyp.txt"
    ref.write_text("a-1 HELLO WORLD\na-2 GOOD MORNING\n", encoding="utf-8-sig")
    hyp.write_text("a-1 HELLO WORLD\na-2 GOOD MORNING\n", encoding="utf-8-sig")
    assert main(["score", "--ref", str(ref), "--hyp", str(hyp), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["wer"] == 0


def test_a_non_utf8_trans_txt_names_the_file(tmp_path):
    from asr.data.manifest import prepare_split

    chapter = tmp_path / "LibriSpeech" / "dev" / "1" / "2"
    chapter.mkdir(parents=True)
    (chapter / "1-2.trans.txt").write_bytes(b"1-2-0000 CAF\xe9\n")
    (chapter / "1-2-0000.flac").write_bytes(b"")
    with pytest.raises(ValueError, match=r"1-2\.trans\.txt:1: not valid UTF-8"):
        prepare_split(chapter.parent.parent, tmp_path / "out")


def test_a_truncated_index_npz_names_its_path(tiny_corpus, tmp_path):
    split = copy_shards(tiny_corpus.shards / "dev-clean", tmp_path / "dev-clean")
    os.truncate(split / "index.npz", (split / "index.npz").stat().st_size // 2)
    with pytest.raises(ValueError, match=rf"{split / 'index.npz'}: not a readable shard index"):
        load_index(split)


def test_a_killed_prepare_leaves_no_temporary_files(tiny_corpus, tmp_path):
    """SIGTERM unwinds the command, so an atomic write removes its temporary file; what a
    kill -9 left is removed by the next prepare (a live writer's is kept)."""
    code = ("import os, signal, sys; from asr.cli import _terminated; from asr.fileio import atomic_path; "
            "signal.signal(signal.SIGTERM, _terminated)\n"
            "with atomic_path(sys.argv[1]) as tmp:\n    tmp.write_text('half'); os.kill(os.getpid(), signal.SIGTERM)")
    proc = subprocess.run([PYTHON, "-c", code, str(tmp_path / "m.jsonl")], env=env(), timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and list(tmp_path.iterdir()) == []

    out = tmp_path / "data"
    stale = out / "manifests" / ".dev-clean.jsonl.tmp-999999999"
    stale.parent.mkdir(parents=True)
    stale.write_text("half")
    live = out / "manifests" / f".other.jsonl.tmp-{os.getppid()}"
    live.write_text("in progress")
    main(["prepare", "--corpus", str(tiny_corpus.librispeech), "--out", str(out), "--splits", "dev-clean", "--jobs", "1"])
    assert not stale.exists() and live.exists() and (out / "manifests" / "dev-clean.jsonl").exists()
