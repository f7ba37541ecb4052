"""The recipes end to end at toy size, `asr prepare --combine`, and the shipped experiment configs.

The recipes run as a user runs them (bash, from the repository root); training is a ~10k-parameter
model for a few steps on a CPU, so each test checks plumbing and contracts, not accuracy.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.cli import main
from asr.config import load_config
from asr.data.manifest import combine_manifests, prepare_corpus, read_manifest
from asr.plot import read_metrics
from asr.sweep import Launch, launch_for, parse_kappas, plan_scratch, plan_sweep, progressive_ramp
from asr.sweep import main as sweep_main
from asr.sweep_report import final_wers, verdict

REPO = Path(__file__).resolve().parents[1]
LIBRISPEECH_MINI = REPO.parent / "shared" / "librispeech-mini"
LIBRISPEECH = "recipes/librispeech/run.sh"
EMA_SCALING = "recipes/ema_scaling/run.sh"
SYNTH = "recipes/synth/run.sh"
RECIPES = [LIBRISPEECH, EMA_SCALING, SYNTH]

STEP_SECONDS = 15.0  # padded audio of one optimizer step at kappa = 1


def _hours(steps: float) -> float:
    return steps * STEP_SECONDS / 3600


NEEDS_SYNTH_TOOLS = pytest.mark.skipif(any(shutil.which(tool) is None for tool in ("espeak-ng", "sox")),
                                       reason="the synthetic corpus needs espeak-ng and sox (recipes/setup.sh)")

# A ~10k-parameter model, kappa = 1 at one 15 s micro-batch: supervised for 2 steps, then
# pseudo-labels up to step 4; dev WER at the end of each run only.
TOY = [
    "model.d_model=32", "model.num_layers=1", "model.num_heads=2", "model.ffn_dim=64",
    "model.pos_conv_kernel=8", "model.pos_conv_groups=4", "model.conv_module=false", "model.layerdrop=0",
    f"data.max_batch_seconds={STEP_SECONDS}", f"data.max_duration={STEP_SECONDS}", "data.num_buckets=2",
    "data.num_workers=0", f"scaling.reference_seconds={STEP_SECONDS}", "ema.rho=0.9",
    f"schedule.total_hours={_hours(4)}", f"schedule.warmup_hours={_hours(1)}",
    f"schedule.decay_start_hours={_hours(2)}", f"pl.start_hours={_hours(2)}", "specaug.start_hours=0",
    "train.device=cpu", "train.log_every_steps=1", "train.eval_every_hours=1.0",
    f"train.checkpoint_every_hours={_hours(2)}", "eval.batch_seconds=60",
]


def _recipe(script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", script, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _metrics(exp_dir: Path, kind: str) -> list[dict]:
    rows = [json.loads(line) for line in (exp_dir / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if row["kind"] == kind]


def _table(markdown: str) -> dict[str, list[str]]:
    """A markdown table as {first cell: other cells}, the header row under "system"."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines()
            if line.startswith("|") and not line.startswith("| ---")]
    return {cells[0]: cells[1:] for cells in rows}


# ---------------------------------------------------------------------------------------------
# The scripts themselves


@pytest.mark.parametrize("script", [*RECIPES, "recipes/setup.sh", "recipes/shared/env.sh",
                                    "recipes/shared/parse_options.sh", ".ci/run"])
def test_recipe_is_valid_bash_and_passes_shellcheck(script):
    assert subprocess.run(["bash", "-n", script], cwd=REPO).returncode == 0
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    result = subprocess.run(["shellcheck", "-x", script], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("script, stages", [
    (LIBRISPEECH, ["0 download", "1 manifests", "2 tar shards", "3 letter tokenizer", "4 train",
                   "5 evaluate", "6 the WER table"]),
    (EMA_SCALING, ["0 synthesize", "1 manifests", "2 shards", "3 tokenizer", "4 supervised warm start",
                   "5 pseudo-labeled continuation", "6 evaluate", "7 curves", "8 the table"]),
    (SYNTH, ["0 synthesize", "1 scan it into manifests", "2 write tar shards", "3 build the tokenizer",
             "4 supervised warm start", "5 supervised-only", "6 pseudo-labeled", "7 evaluate", "8 the WER table"]),
])
def test_help_lists_every_stage_and_option(script, stages):
    result = _ok(_recipe(script, "--help"))
    assert all(f"  {stage}" in result.stdout for stage in stages)
    assert "--stage N --stop-stage N" in result.stdout and "set -euo" not in result.stdout


@pytest.mark.parametrize("script, args, message", [
    (LIBRISPEECH, ["--bogus"], "unknown option: --bogus"),
    (LIBRISPEECH, ["--stage", "4", "--nnodes", "2"], "--nnodes 2 needs --rdzv-endpoint"),
    (EMA_SCALING, ["--size", "huge"], "--size: expected tiny, demo or gpu"),
    (EMA_SCALING, ["--kappas", "1 0.5"], "--kappas: expected positive integers, got '0.5'"),
    (EMA_SCALING, ["--stage", "4", "--kappas", "3", "--nproc", "2"], "kappa 3: 3 reference processes"),
    (EMA_SCALING, ["--kappas"], "--kappas: expected a value"),
    (EMA_SCALING, ["not-an-override"], "unknown option: not-an-override"),
    (SYNTH, ["--size", "huge"], "--size: expected tiny, demo or gpu"),
    (SYNTH, ["optim.lr=1"], "unknown option: optim.lr=1"),  # the demo takes no overrides
])
def test_bad_options_stop_before_any_work(tmp_path, script, args, message):
    result = _recipe(script, "--exp", str(tmp_path / "exp"), *args)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "exp" / "data").exists()


# ---------------------------------------------------------------------------------------------
# recipes/librispeech


def test_download_refuses_an_archive_with_the_wrong_md5(tmp_path):
    if shutil.which("curl") is None:
        pytest.skip("curl not installed")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "dev-clean.tar.gz").write_bytes(b"not the LibriSpeech archive")
    corpus = tmp_path / "corpus"
    result = _recipe(LIBRISPEECH, "--stop-stage", "0", "--exp", str(tmp_path / "exp"), "--corpus", str(corpus),
                     "--mirror", mirror.as_uri(), "--parts", "dev-clean")
    assert result.returncode == 1
    assert f"{corpus}/dev-clean.tar.gz: md5 mismatch (expected 42e2234ba48799c1f50f24a7926300a1)" in result.stderr
    assert sorted(p.name for p in corpus.iterdir()) == []  # the bad archive is gone, nothing unpacked
    assert not (tmp_path / "exp" / "data" / ".corpus.done").exists()


@pytest.mark.slow
@pytest.mark.skipif(not LIBRISPEECH_MINI.is_dir(), reason=f"{LIBRISPEECH_MINI} not found (real LibriSpeech sample)")
def test_librispeech_recipe_runs_every_stage_on_librispeech_mini(tmp_path):
    """librispeech-mini has only dev-clean, test-clean and test-other: train on dev-clean, pool the
    two test splits into one unlabeled split with --combine, evaluate on all three."""
    exp = tmp_path / "exp"
    args = ["--exp", str(exp), "--corpus", str(LIBRISPEECH_MINI), "--parts", "dev-clean test-clean test-other",
            "--combine", "pool=test-clean+test-other", "--train-split", "dev-clean", "--unlabeled-split", "pool",
            "--dev-splits", "dev-clean", "--test-splits", "test-clean test-other", *TOY]
    result = _ok(_recipe(LIBRISPEECH, *args))
    assert "dev-clean: present" in result.stdout and not (exp / "corpus").exists()  # stage 0: nothing to fetch
    markers = ["data/.corpus.done", "data/.manifests.done", "data/.shards.done", "data/.tokenizer.done",
               "train/.done", "eval/.done", ".results.done"]
    assert sorted(str(p.relative_to(exp)) for p in exp.rglob("*.done")) == sorted(markers)

    pool = read_manifest(exp / "data" / "manifests" / "pool.jsonl")
    assert len(pool) == 5 + 101 and [e["id"] for e in pool] == sorted(e["id"] for e in pool)
    assert sorted(p.name for p in (exp / "data" / "shards").iterdir()) == ["dev-clean", "pool", "test-clean",
                                                                           "test-other"]
    resolved = load_config(exp / "train" / "config.yaml")
    assert (resolved.data.train_split, resolved.data.unlabeled_split, list(resolved.data.dev_splits)) == (
        "dev-clean", "pool", ["dev-clean"])
    assert resolved.model.num_layers == 1  # the key=value overrides reached asr train
    assert "teacher/dev-clean" in _metrics(exp / "train", "dev_wer")[-1]

    table = _table((exp / "RESULTS.md").read_text())
    assert table["system"] == ["dev-clean WER %", "test-clean WER %", "test-other WER %"]
    assert set(table) == {"system", "student", "EMA teacher"}
    assert all(float(cell) >= 0 for row in ("student", "EMA teacher") for cell in table[row])

    again = _ok(_recipe(LIBRISPEECH, *args))  # every stage is done: nothing runs twice
    assert "Stage" not in again.stdout


# ---------------------------------------------------------------------------------------------
# recipes/ema_scaling


def _plan(kappas: list[int], **kw) -> list[tuple]:
    return [(r.name, r.launch.processes, r.launch.accum_steps, r.init_from, r.label)
            for r in plan_sweep(kappas, **kw)]


def test_sweep_reaches_each_kappa_with_processes_then_accumulation():
    assert [launch_for(k, base_nproc=1, max_nproc=8) for k in (1, 2, 8, 16)] == [
        Launch(1, 1), Launch(2, 1), Launch(8, 1), Launch(8, 2)]
    assert launch_for(2, base_nproc=8, max_nproc=8) == Launch(8, 2)  # the paper's 8-GPU reference
    with pytest.raises(ValueError, match="kappa 3: 3 reference processes' batch is not a multiple of --nproc 2"):
        launch_for(3, base_nproc=1, max_nproc=2)


def test_sweep_runs_one_reference_and_both_rules_elsewhere():
    assert _plan([1, 2], max_nproc=1) == [
        ("kappa1-warm", 1, 1, "-", "kappa 1, warm start"),
        ("kappa2-warm", 1, 2, "-", "kappa 2, warm start"),
        ("kappa1-power", 1, 1, "kappa1-warm", "kappa 1, reference"),
        ("kappa2-power", 1, 2, "kappa2-warm", "kappa 2, rho^kappa"),
        ("kappa2-none", 1, 2, "kappa2-warm", "kappa 2, rho unscaled"),
    ]
    shared = _plan([2, 4], max_nproc=4, shared_warm_start=True)
    assert [row[0] for row in shared] == ["kappa2-warm", "kappa2-power", "kappa2-none", "kappa4-power", "kappa4-none"]
    assert {row[3] for row in shared[1:]} == {"kappa2-warm"}


@pytest.mark.parametrize(("text", "message"), [
    ("1 0.5", "got '0.5'"), ("0", "got '0'"), ("", "got none"), ("1 -2", "got '-2'"),
])
def test_sweep_refuses_kappas_that_are_not_positive_integers(text, message):
    with pytest.raises(ValueError, match=message):
        parse_kappas(text)


def test_sweep_module_prints_a_tab_separated_plan(capsys):
    assert sweep_main(["--kappas", "1 2", "--nproc", "2"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert rows[-1] == ["pl", "kappa2-none", "2", "none", "2", "1", "kappa2-warm", "kappa 2, rho unscaled"]
    assert sweep_main(["--kappas", "3", "--nproc", "2"]) == 2


def test_ema_scaling_on_prepared_data_skips_the_synthetic_data_stages(tmp_path):
    prepared = tmp_path / "librispeech-data"
    prepared.mkdir()
    result = _ok(_recipe(EMA_SCALING, "--exp", str(tmp_path / "exp"), "--data", str(prepared), "--stop-stage", "3"))
    assert "Stage" not in result.stdout and list(prepared.iterdir()) == []


@pytest.mark.slow
@NEEDS_SYNTH_TOOLS
def test_ema_scaling_sweep_scales_rho_only_under_the_ema_rule(tmp_path):
    exp = tmp_path / "exp"
    _ok(_recipe(EMA_SCALING, "--size", "tiny", "--exp", str(exp), "--kappas", "1 2", *TOY))
    runs = exp / "runs"
    assert sorted(p.name for p in runs.iterdir()) == [
        "kappa1-power", "kappa1-warm", "kappa2-none", "kappa2-power", "kappa2-warm"]

    # the warm start of each kappa stops at the pseudo-label start: 2 steps at kappa 1, 1 at kappa 2
    assert [_metrics(runs / f"kappa{k}-warm", "train")[-1]["step"] for k in (1, 2)] == [2, 1]
    for name, kappa, rho in [("kappa1-power", 1, 0.9), ("kappa2-power", 2, 0.81), ("kappa2-none", 2, 0.9)]:
        rows = _metrics(runs / name, "train")
        assert {row["kappa"] for row in rows} == {kappa}
        assert rows and all(row["rho"] == pytest.approx(rho) for row in rows)  # a teacher from the first step
        assert rows[-1]["step"] == 4 // kappa

    names = ["kappa 1, reference", "kappa 2, rho^kappa", "kappa 2, rho unscaled"]
    with open(exp / "ema_scaling.csv", newline="") as f:
        plotted = {(row["run"], row["series"]) for row in csv.DictReader(f)}
    assert {(name, series) for name in names for series in ("loss", "student/dev-clean")} <= plotted
    assert (exp / "ema_scaling.png").read_bytes()[:4] == b"\x89PNG"

    table = _table((exp / "RESULTS.md").read_text())
    assert table["system"] == ["dev-clean WER %", "dev-other WER %"]
    assert list(table)[1:] == [f"{name} ({weights})" for name in names for weights in ("student", "teacher")]


@pytest.mark.slow
@NEEDS_SYNTH_TOOLS
def test_ema_scaling_shared_warm_start_continues_every_kappa_from_the_first(tmp_path):
    exp = tmp_path / "exp"
    _ok(_recipe(EMA_SCALING, "--size", "tiny", "--exp", str(exp), "--kappas", "1 2", "--shared-warm-start",
                "--stop-stage", "5", *TOY))
    runs = exp / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["kappa1-power", "kappa1-warm", "kappa2-none", "kappa2-power"]
    warm_end = _metrics(runs / "kappa1-warm", "train")[-1]
    for name, kappa in [("kappa2-power", 2), ("kappa2-none", 2)]:
        rows = _metrics(runs / name, "train")
        # 2 reference steps of warm start are 1 step at kappa 2; then 1 more to the end (4 // kappa)
        assert rows[0]["hours"] > warm_end["hours"] and {row["kappa"] for row in rows} == {kappa}
        assert rows[-1]["step"] == 4 // kappa


# ---------------------------------------------------------------------------------------------
# asr prepare --combine


def _split(root: Path, split: str, ids: list[str], text: str = "A WORD") -> None:
    for utt_id in ids:
        speaker, chapter, _ = utt_id.split("-")
        folder = root / "LibriSpeech" / split / speaker / chapter
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / f"{utt_id}.flac", np.zeros(1600, dtype=np.float32), 16000)
        with open(folder / f"{speaker}-{chapter}.trans.txt", "a") as f:
            f.write(f"{utt_id} {text}\n")


@pytest.fixture
def two_parts(tmp_path) -> Path:
    """A corpus of two small labeled splits whose ids interleave."""
    corpus = tmp_path / "corpus"
    _split(corpus, "clean", ["1-10-0000", "3-30-0000", "3-30-0001"], text="CLEAN")
    _split(corpus, "other", ["2-20-0000", "4-40-0000"], text="OTHER")
    return corpus


def test_combine_writes_the_parts_lines_sorted_by_id(two_parts, tmp_path):
    out = tmp_path / "out"
    assert main(["prepare", "--corpus", str(two_parts), "--out", str(out), "--jobs", "1",
                 "--combine", "both=clean+other"]) == 0
    manifests = out / "manifests"
    combined = (manifests / "both.jsonl").read_text().splitlines()
    parts = (manifests / "clean.jsonl").read_text().splitlines() + (manifests / "other.jsonl").read_text().splitlines()
    assert sorted(combined) == sorted(parts)  # the lines verbatim
    assert [json.loads(line)["id"] for line in combined] == [
        "1-10-0000", "2-20-0000", "3-30-0000", "3-30-0001", "4-40-0000"]
    summary = json.loads((manifests / "both.summary.json").read_text())
    assert (summary["utterances"], summary["combined_from"]) == (5, ["clean", "other"])
    assert summary["hours"] == pytest.approx(sum(e["duration"] for e in read_manifest(manifests / "both.jsonl")) / 3600)


def test_combine_reuses_splits_prepared_by_an_earlier_run(two_parts, tmp_path):
    out = tmp_path / "out"
    prepare_corpus(two_parts, out, splits=["clean", "other"], jobs=1)
    (two_parts / "LibriSpeech" / "clean").rename(tmp_path / "moved")  # only its manifest is left
    summaries = prepare_corpus(two_parts, out, splits=["other"], jobs=1, combine={"both": ["clean", "other"]})
    assert summaries["both"].utterances == 5


def test_combine_fails_on_an_id_in_two_parts_naming_both(two_parts, tmp_path):
    _split(two_parts, "again", ["3-30-0001", "5-50-0000"])
    out = tmp_path / "out"
    prepare_corpus(two_parts, out, jobs=1)
    with pytest.raises(ValueError, match="utterance 3-30-0001 is in both clean and again"):
        combine_manifests(out / "manifests", "all", ["other", "clean", "again"])
    assert not (out / "manifests" / "all.jsonl").exists()


@pytest.mark.parametrize("combine, message", [
    ("both=clean+missing", "no manifest of missing"),
    ("both=clean", "two or more distinct splits"),
    ("both=clean+clean", "two or more distinct splits"),
    ("clean=clean+other", "cannot also be one of its parts"),
    ("other=clean+clean2", "a split of that name is being prepared"),
])
def test_bad_combination_fails_before_preparing_anything(two_parts, tmp_path, combine, message, capsys):
    _split(two_parts, "clean2", ["6-60-0000"])
    out = tmp_path / "out"
    assert main(["prepare", "--corpus", str(two_parts), "--out", str(out), "--combine", combine]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("spec", ["both", "=a+b", "both=a+", "both=+b"])
def test_malformed_combine_spec_is_rejected_by_the_parser(two_parts, tmp_path, spec, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", "--corpus", str(two_parts), "--out", str(tmp_path), "--combine", spec])
    assert exit_info.value.code == 2 and "NAME=SPLIT+SPLIT" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Shipped experiment configs


def test_synth_base_trains_the_base_model_and_optimizer_on_a_short_schedule():
    base = load_config(REPO / "configs" / "base.yaml")
    synth = load_config(REPO / "configs" / "synth_base.yaml")
    assert synth.model == base.model
    assert (synth.optim.name, synth.optim.betas, synth.optim.eps, synth.optim.grad_clip) == (
        base.optim.name, base.optim.betas, base.optim.eps, base.optim.grad_clip)
    assert (synth.scaling.ema_rule, synth.ema.start, synth.tokenizer.kind) == ("power", "pl_start", "letters")
    # one GPU is the reference: kappa = GPUs x accumulation
    assert synth.scaling.reference_seconds == synth.data.max_batch_seconds
    # hours of audio: warm-up < SpecAugment start < pseudo-label start < total
    s = synth.schedule
    assert s.warmup_hours < synth.specaug.start_hours < synth.pl.start_hours < s.total_hours
    assert s.total_hours < base.schedule.total_hours


def test_paper_config_is_the_semi_supervised_librispeech_setup():
    cfg = load_config(REPO / "configs" / "librispeech_paper.yaml")
    assert (cfg.data.train_split, cfg.data.unlabeled_split, cfg.tokenizer.kind) == (
        "train-clean-100", "train-860", "letters")
    assert (cfg.model.num_layers, cfg.model.d_model, cfg.model.num_heads, cfg.model.ffn_dim) == (36, 768, 4, 3072)
    assert (cfg.optim.name, cfg.scaling.optimizer_rule, cfg.scaling.ema_rule) == ("adam", "auto", "power")
    assert cfg.specaug.policy != "none" and cfg.pl.enabled and cfg.ema.start == "pl_start"
    # schedules in hours of audio: warm-up < pseudo-label start < total
    assert 0 < cfg.schedule.warmup_hours < cfg.pl.start_hours < cfg.schedule.total_hours


# ---------------------------------------------------------------------------------------------
# recipes/ema_scaling --from-scratch: the paper's experiment


def test_from_scratch_plan_has_a_reference_per_seed_and_three_arms_elsewhere():
    runs = plan_scratch([1, 2, 8], [0, 1], ramp_hours=0.5)
    assert [r.name for r in runs[:4]] == ["kappa1-reference-seed0", "kappa2-progressive-seed0",
                                          "kappa2-rule-seed0", "kappa2-rho-fixed-seed0"]
    assert len(runs) == 2 * (1 + 3 + 3)
    by_name = {r.name: r.overrides for r in runs}
    assert by_name["kappa8-rule-seed1"] == ("train.seed=1", "data.seed=1", "scaling.ema_rule=power",
                                            "train.accum_steps=8")
    ramp = ('scaling.progressive=[{"hours":0,"accum_steps":1},{"hours":0.5,"accum_steps":2},'
            '{"hours":1,"accum_steps":4},{"hours":1.5,"accum_steps":8}]')
    assert by_name["kappa8-progressive-seed0"][-2:] == ("scaling.ema_rule=power", ramp)
    assert by_name["kappa8-rho-fixed-seed0"][-2:] == ("scaling.ema_rule=none", ramp)


@pytest.mark.parametrize(("accum", "stages"), [
    (1, [(0.0, 1)]), (2, [(0.0, 1), (1.0, 2)]), (6, [(0.0, 1), (1.0, 2), (2.0, 4), (3.0, 6)]),
])
def test_progressive_ramp_doubles_the_batch_up_to_the_runs_accumulation(accum, stages):
    assert progressive_ramp(Launch(1, accum), 1.0) == stages


def test_the_verdict_names_every_final_wer_outside_the_reference_band():
    reference = {"teacher/dev-clean": [30.0, 32.0, 31.0], "student/dev-clean": [40.0, 44.0]}
    assert verdict({"teacher/dev-clean": 32.5, "student/dev-clean": 41.0}, reference).startswith("holds")
    assert verdict({"teacher/dev-clean": 36.0, "student/dev-clean": 41.0}, reference) == \
        "outside the kappa 1 band: teacher/dev-clean +5.0 points"


def _run_folder(root: Path, name: str, total_hours: float, dev_rows: list[tuple[float, float]]) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"schedule:\n  total_hours: {total_hours}\n")
    rows = [{"kind": "dev_wer", "step": i, "hours": h, "student/dev-clean": w, "teacher/dev-clean": w + 1}
            for i, (h, w) in enumerate(dev_rows)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_final_wers_are_a_finished_runs_last_evaluation_or_asr_eval_where_given(tmp_path):
    finished = _run_folder(tmp_path / "runs", "kappa2-rule-seed0", 11.0, [(2.0, 80.0), (11.07, 61.5)])
    assert final_wers(finished, read_metrics(finished)) == {"student/dev-clean": 61.5, "teacher/dev-clean": 62.5}
    unfinished = _run_folder(tmp_path / "runs", "kappa2-rule-seed1", 11.0, [(2.0, 80.0), (10.0, 63.0)])
    assert final_wers(unfinished, read_metrics(unfinished)) == {}  # cut short: no final WER, so no seed in the table
    summary = tmp_path / "eval" / "kappa2-rule-seed1-student" / "dev-clean" / "summary.json"
    summary.parent.mkdir(parents=True)
    summary.write_text(json.dumps({"split": "dev-clean", "wer": 0.6}))
    assert final_wers(unfinished, read_metrics(unfinished), tmp_path / "eval") == {"student/dev-clean": 60.0}


def test_no_verdict_without_a_band_or_without_every_final_wer():
    assert verdict({"student/dev-clean": 41.0}, {"student/dev-clean": [40.0]}).startswith("no verdict")
    assert verdict({}, {"student/dev-clean": [40.0, 44.0]}) == "no verdict: no final student/dev-clean"
    assert verdict({"student/dev-clean": 41.0}, {}).startswith("no verdict")


@pytest.mark.slow
@NEEDS_SYNTH_TOOLS
def test_ema_scaling_from_scratch_runs_every_arm_and_seed_and_reports_bands(tmp_path):
    exp = tmp_path / "exp"
    _ok(_recipe(EMA_SCALING, "--size", "tiny", "--exp", str(exp), "--from-scratch", "--kappas", "1 2",
                "--seeds", "0 1", "--parallel", "2", "--ramp-hours", str(_hours(1)), *TOY))
    runs = exp / "runs"
    names = sorted(p.name for p in runs.iterdir() if p.is_dir())
    assert names == sorted(f"kappa{k}-{arm}-seed{s}" for s in (0, 1)
                           for k, arm in [(1, "reference"), (2, "progressive"), (2, "rule"), (2, "rho-fixed")])
    progressive = _metrics(runs / "kappa2-progressive-seed0", "train")
    assert [row["kappa"] for row in progressive][:2] == [1.0, 1.0] and progressive[-1]["kappa"] == 2.0
    assert {row["kappa"] for row in _metrics(runs / "kappa2-rule-seed0", "train")} == {2.0}
    teacher_rho = {name: sorted({round(row["rho"], 9) for row in _metrics(runs / name, "train") if row["rho"] is not None})
                   for name in ("kappa2-progressive-seed1", "kappa2-rho-fixed-seed1")}
    assert teacher_rho == {"kappa2-progressive-seed1": [0.81], "kappa2-rho-fixed-seed1": [0.9]}
    report = (exp / "sweep_report.md").read_text()
    assert "| kappa 1 (reference) | 2 of 2 |" in report and report.count("| kappa 2, ") == 3
    assert (exp / "sweep_report.png").read_bytes()[:4] == b"\x89PNG"
