"""``asr eval`` and ``asr results`` end to end: a tiny trained checkpoint decodes real
LibriSpeech utterances. Its WER is near 100%: these tests check the pipeline and the report
formats, not accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import MINI

from asr.checkpoint import average_state_dicts, list_checkpoints
from asr.cli import main
from asr.data.manifest import prepare_corpus
from asr.data.shards import shard_manifests
from asr.evaluate import load_model_for_eval
from asr.report import SPEAKERS_HEADER

pytestmark = pytest.mark.skipif(not (MINI / "LibriSpeech").is_dir(),
                                reason=f"needs the real-speech set ../shared/librispeech-mini, not found at {MINI}")

SPLITS = {"test-clean": 5, "dev-clean": 9}  # utterances of each split in librispeech-mini
REPORTS = ["alignments.txt", "hyp.trn", "hyp.txt", "ref.trn", "results_row.md", "speakers.tsv", "summary.json"]
SCORES = ["wer", "cer", "n_utterances", "n_words", "n_chars", "substitutions", "deletions", "insertions",
          "char_substitutions", "char_deletions", "char_insertions", "speakers"]


def run_eval(checkpoint: Path, data: Path, out: Path, *extra: str) -> None:
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--split", *SPLITS,
                 "--out", str(out), "--device", "cpu", *extra]) == 0


def summary(out: Path, split: str) -> dict:
    return json.loads((out / split / "summary.json").read_text())


@pytest.fixture(scope="module")
def student_eval(trained_run, tmp_path_factory) -> Path:
    """``asr eval`` of the trained run's last student over the LibriSpeech folder itself."""
    out = tmp_path_factory.mktemp("eval") / "student"
    run_eval(trained_run, MINI, out)
    return out


@pytest.mark.parametrize("split", SPLITS)
def test_eval_writes_every_report_of_each_split(student_eval, trained_run, split):
    folder = student_eval / split
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == REPORTS
    found = summary(student_eval, split)
    assert (found["split"], found["weights"], found["decoder"]) == (split, "student", "greedy")
    assert found["name"] == "tiny/student@10"
    assert Path(found["checkpoint"]) == trained_run / "checkpoints" / "last.pt"
    assert found["n_utterances"] == SPLITS[split] and found["n_words"] > 0
    assert found["wer"] >= 0 and found["cer"] >= 0
    assert found["missing_hypotheses"]["count"] == 0

    ids = sorted(p.stem for p in (MINI / "LibriSpeech" / split).rglob("*.flac"))
    hyp_ids = [line.split(" ", 1)[0] for line in (folder / "hyp.txt").read_text().splitlines()]
    assert sorted(hyp_ids) == ids
    for trn in ("ref.trn", "hyp.trn"):  # sclite: WORDS (utt-id)
        lines = (folder / trn).read_text().splitlines()
        assert sorted(line.rsplit("(", 1)[1].rstrip(")") for line in lines) == ids
    assert (folder / "alignments.txt").read_text().count("\nREF:") == SPLITS[split]
    speakers = (folder / "speakers.tsv").read_text().splitlines()
    assert speakers[0].split("\t") == list(SPEAKERS_HEADER)
    assert sorted(row.split("\t")[0] for row in speakers[1:]) == sorted({i.split("-")[0] for i in ids})
    assert (folder / "results_row.md").read_text().startswith(f"| tiny/student@10 {split} | ")


def test_eval_decodes_the_teacher_and_averaged_weights(trained_run, student_eval, tmp_path):
    run_eval(trained_run, MINI, tmp_path / "teacher", "--weights", "teacher")
    assert summary(tmp_path / "teacher", "test-clean")["name"] == "tiny/teacher@10"
    run_eval(trained_run, MINI, tmp_path / "averaged", "--average-last", "2")
    assert summary(tmp_path / "averaged", "test-clean")["n_utterances"] == SPLITS["test-clean"]

    model, _, _ = load_model_for_eval(trained_run, "student", average_last=2)
    last_two = list_checkpoints(trained_run / "checkpoints")[-2:]
    assert [p.name for p in last_two] == ["update-00000009.pt", "update-00000010.pt"]
    for name, tensor in average_state_dicts(last_two, "student").items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_eval_averages_the_checkpoints_up_to_the_chosen_one(trained_run):
    model, _, info = load_model_for_eval(trained_run / "checkpoints" / "update-00000009.pt", "student", average_last=2)
    assert info["step"] == 9
    expected = average_state_dicts([trained_run / "checkpoints" / f"update-0000000{s}.pt" for s in (6, 9)], "student")
    for name, tensor in expected.items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_eval_gives_the_same_numbers_from_folder_manifests_and_shards(trained_run, student_eval, tmp_path):
    prepare_corpus(MINI, tmp_path / "data", splits=list(SPLITS), jobs=1)
    shard_manifests(tmp_path / "data" / "manifests", tmp_path / "data" / "shards", jobs=1)
    for source in ("manifests", "shards"):
        run_eval(trained_run, tmp_path / "data" / source, tmp_path / source)
        for split in SPLITS:
            expected, found = summary(student_eval, split), summary(tmp_path / source, split)
            assert {k: found[k] for k in SCORES} == {k: expected[k] for k in SCORES}, (source, split)
            assert (tmp_path / source / split / "hyp.txt").read_text() == (student_eval / split / "hyp.txt").read_text()


@pytest.mark.parametrize(("args", "message"), [
    (["--split", "test-nowhere"], "split 'test-nowhere' not found under"),
    (["--average-last", "5"], "--average-last 5: only 3 periodic checkpoints up to step 10"),
    (["--checkpoint", "nowhere.pt"], "no checkpoint at nowhere.pt"),
], ids=["unknown-split", "more-to-average-than-saved", "missing-checkpoint"])
def test_eval_errors_name_what_was_expected(trained_run, tmp_path, capsys, args, message):
    argv = ["eval", "--checkpoint", str(trained_run), "--data", str(MINI), "--split", "test-clean",
            "--out", str(tmp_path / "out"), "--device", "cpu"]
    assert main([*argv, *args]) == 2
    assert message in capsys.readouterr().err


def test_results_collects_eval_folders_into_one_table(student_eval, trained_run, tmp_path, capsys):
    run_eval(trained_run, MINI, tmp_path / "teacher", "--weights", "teacher")
    capsys.readouterr()
    table_file = tmp_path / "table.md"
    assert main(["results", str(student_eval), str(tmp_path / "teacher"), "--out", str(table_file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == table_file.read_text().splitlines()
    assert lines[0] == "| system | dev-clean WER % | test-clean WER % |"
    rates = {split: f"{100 * summary(student_eval, split)['wer']:.2f}" for split in SPLITS}
    assert lines[2] == f"| tiny/student@10 | {rates['dev-clean']} | {rates['test-clean']} |"
    assert lines[3].startswith("| tiny/teacher@10 | ")
    assert len(lines) == 4


def _eval_rank(rank: int, world_size: int, checkpoint: str, data: str, init_file: str, out: str) -> None:
    """One torchrun-like rank of ``asr eval``: a gloo group, then the command itself."""
    import datetime
    import os

    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=60))
    try:
        run_eval(Path(checkpoint), Path(data), Path(out))
    finally:
        dist.destroy_process_group()


def test_eval_on_two_ranks_gives_the_numbers_of_one_process(trained_run, student_eval, tmp_path):
    """Each rank decodes its share of the batches and the hypotheses are gathered: the reports
    equal those of a single process, utterance for utterance."""
    import torch.multiprocessing as mp

    prepare_corpus(MINI, tmp_path / "prepared", splits=list(SPLITS))  # once, before the ranks fork
    out = tmp_path / "two-ranks"
    mp.start_processes(_eval_rank, args=(2, str(trained_run), str(tmp_path / "prepared" / "manifests"),
                                         str(tmp_path / "init"), str(out)), nprocs=2, start_method="fork")
    for split in SPLITS:
        assert (out / split / "hyp.txt").read_text() == (student_eval / split / "hyp.txt").read_text()
        two, one = summary(out, split), summary(student_eval, split)
        assert {k: two[k] for k in SCORES} == {k: one[k] for k in SCORES}
