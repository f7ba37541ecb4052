"""`asr plot`: dev WER and training loss of several runs against hours of audio seen, with the
plotted points as CSV beside the figure."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from asr.cli import main
from asr.plot import plot_runs, read_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _write_metrics(exp_dir: Path, rows: list[dict]) -> Path:
    exp_dir.mkdir(parents=True, exist_ok=True)
    with open(exp_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return exp_dir


def _train(step: int, hours: float, loss: float | None, pl_loss: float | None = None) -> dict:
    """A train row as the trainer writes it: a loss is null for an interval without that kind."""
    return {"kind": "train", "step": step, "hours": hours, "loss": loss, "pl_loss": pl_loss, "lr": 1e-3}


def _dev(step: int, hours: float, student: float, teacher: float | None = None) -> dict:
    row = {"kind": "dev_wer", "step": step, "hours": hours,
           "student/dev-clean": student, "student/dev-other": student + 10}
    if teacher is not None:
        row |= {"teacher/dev-clean": teacher, "teacher/dev-other": teacher + 10}
    return row


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def two_runs(tmp_path) -> dict[str, Path]:
    """kappa 1 (four steps of 0.1 h) and kappa 2 (two steps of 0.2 h) over the same audio."""
    ref = _write_metrics(tmp_path / "kappa1", [
        _train(1, 0.1, 300.0), _train(2, 0.2, 200.0), _dev(2, 0.2, 90.0),
        _train(3, 0.3, 150.0, pl_loss=40.0), _train(4, 0.4, 120.0, pl_loss=30.0), _dev(4, 0.4, 70.0, 72.0),
    ])
    big = _write_metrics(tmp_path / "kappa2", [
        _train(1, 0.2, 210.0), _dev(1, 0.2, 91.0), _train(2, 0.4, 125.0, pl_loss=31.0), _dev(2, 0.4, 71.0, 74.0),
    ])
    return {"kappa 1": ref, "kappa 2": big}


def test_plot_writes_a_png_and_the_plotted_points_as_csv(two_runs, tmp_path):
    out = tmp_path / "plots" / "scaling.png"
    assert main(["plot", "--runs", *(f"{name}={path}" for name, path in two_runs.items()),
                 "--out", str(out), "--title", "EMA Scaling Rule"]) == 0
    assert out.read_bytes().startswith(PNG_SIGNATURE) and out.stat().st_size > 10_000
    rows = _csv_rows(out.with_suffix(".csv"))
    points = [(r["run"], r["series"], int(r["step"]), float(r["hours"]), float(r["value"])) for r in rows]
    assert points == [
        ("kappa 1", "student/dev-clean", 2, 0.2, 90.0), ("kappa 1", "student/dev-clean", 4, 0.4, 70.0),
        ("kappa 1", "teacher/dev-clean", 4, 0.4, 72.0),
        ("kappa 2", "student/dev-clean", 1, 0.2, 91.0), ("kappa 2", "student/dev-clean", 2, 0.4, 71.0),
        ("kappa 2", "teacher/dev-clean", 2, 0.4, 74.0),
        ("kappa 1", "loss", 1, 0.1, 300.0), ("kappa 1", "loss", 2, 0.2, 200.0),
        ("kappa 1", "loss", 3, 0.3, 150.0), ("kappa 1", "loss", 4, 0.4, 120.0),
        ("kappa 1", "pl_loss", 3, 0.3, 40.0), ("kappa 1", "pl_loss", 4, 0.4, 30.0),
        ("kappa 2", "loss", 1, 0.2, 210.0), ("kappa 2", "loss", 2, 0.4, 125.0),
        ("kappa 2", "pl_loss", 2, 0.4, 31.0),
    ]


@pytest.mark.parametrize("metric, series", [
    ("dev_wer", {"student/dev-clean", "teacher/dev-clean"}),
    ("loss", {"loss", "pl_loss"}),
])
def test_metric_keeps_one_panel(two_runs, tmp_path, metric, series):
    out = tmp_path / f"{metric}.png"
    plot_runs(list(two_runs.items()), out, metric=metric)
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    assert {r["series"] for r in _csv_rows(out.with_suffix(".csv"))} == series


def test_resumed_run_keeps_the_rows_of_the_timeline_it_went_on_with(tmp_path):
    run = _write_metrics(tmp_path / "run", [_train(1, 0.1, 300.0), _train(2, 0.2, 250.0), _dev(2, 0.2, 95.0),
                                            _train(3, 0.3, 240.0)])
    _write_metrics(run, [_train(3, 0.3, 180.0), _dev(3, 0.3, 80.0), _train(4, 0.4, 150.0)])  # resumed at 2
    rows = read_metrics([run])
    assert [(r["kind"], r["step"]) for r in rows] == [
        ("train", 1), ("dev_wer", 2), ("train", 2), ("dev_wer", 3), ("train", 3), ("train", 4)]
    assert next(r["loss"] for r in rows if (r["kind"], r["step"]) == ("train", 3)) == 180.0


def test_continuation_folders_join_into_one_curve(tmp_path):
    warm = _write_metrics(tmp_path / "warm", [_train(1, 0.1, 300.0), _train(2, 0.2, 200.0), _dev(2, 0.2, 90.0)])
    pseudo = _write_metrics(tmp_path / "pseudo", [_dev(2, 0.2, 89.0, 89.0), _train(3, 0.3, 150.0, 40.0)])
    out = tmp_path / "joined.png"
    assert main(["plot", "--runs", f"pseudo-labeled={warm},{pseudo}", "--out", str(out)]) == 0
    points = [(r["series"], r["step"], r["value"]) for r in _csv_rows(out.with_suffix(".csv"))]
    assert points == [("student/dev-clean", "2", "89"), ("teacher/dev-clean", "2", "89"),
                      ("loss", "1", "300"), ("loss", "2", "200"), ("loss", "3", "150"), ("pl_loss", "3", "40")]


def test_continuation_at_another_kappa_joins_by_hours_not_steps(tmp_path):
    # a warm start of 4 steps at kappa 1 continued at kappa 2: the child counts from step 2
    warm = _write_metrics(tmp_path / "warm", [_train(step, step / 10, 300.0 - step) for step in (1, 2, 3, 4)])
    child = _write_metrics(tmp_path / "child", [_train(3, 0.6, 150.0), _train(4, 0.8, 140.0)])
    rows = read_metrics([warm, child])
    assert [(r["step"], r["hours"]) for r in rows] == [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.4), (3, 0.6), (4, 0.8)]


def test_loss_of_an_interval_without_that_kind_of_batch_is_not_plotted(tmp_path):
    """The trainer logs null for the labeled loss of an interval with only pseudo-labeled batches."""
    run = _write_metrics(tmp_path / "run", [_train(1, 0.1, 300.0), _train(2, 0.2, None, 45.0),
                                            _train(3, 0.3, 250.0)])
    out = tmp_path / "loss.png"
    plot_runs([("run", [run])], out, metric="loss")
    points = [(r["series"], r["step"]) for r in _csv_rows(out.with_suffix(".csv"))]
    assert points == [("loss", "1"), ("loss", "3"), ("pl_loss", "2")]


@pytest.mark.parametrize("argv, message", [
    (["--runs", "no-equals-sign", "--out", "f.png"], "NAME=EXP_DIR"),
    (["--runs", "=exp", "--out", "f.png"], "NAME=EXP_DIR"),
    (["--runs", "a=exp,", "--out", "f.png"], "NAME=EXP_DIR"),
])
def test_bad_run_spec_is_rejected_by_the_parser(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("make_runs, out_name, message", [
    (lambda d: [("a", [d / "missing"])], "f.png", "metrics.jsonl: not found"),
    (lambda d: [("a", [_write_metrics(d / "a", [_train(1, 0.1, 1.0)])])] * 2, "f.png", "distinct run names, got a"),
    (lambda d: [("a", [_write_metrics(d / "a", [_train(1, 0.1, 1.0)])])], "f.csv", "ending in .png"),
    (lambda d: [("a", [_write_metrics(d / "a", [{"kind": "train", "step": 1, "hours": 0.1}])])], "f.png",
     "nothing to plot"),
])
def test_bad_input_names_what_was_expected(tmp_path, make_runs, out_name, message):
    with pytest.raises((FileNotFoundError, ValueError), match=message):
        plot_runs(make_runs(tmp_path), tmp_path / out_name)


def test_invalid_metrics_line_names_file_and_line(tmp_path):
    run = _write_metrics(tmp_path / "run", [_train(1, 0.1, 300.0)])
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "step": 2\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON object"):
        read_metrics([run])


def test_pseudo_label_wer_before_and_after_the_filters_is_a_panel_in_percent(tmp_path):
    """A run on the synthetic corpus logs its pseudo-labels' WER against the held-out truth, of
    all labels and of those kept: the third panel, in percent; intervals without pseudo-labels
    (null) are left out."""
    run = _write_metrics(tmp_path / "pl", [
        _train(1, 0.1, 300.0) | {"pl_wer": None, "pl_wer_kept": None},
        _train(2, 0.2, None, pl_loss=40.0) | {"pl_wer": 0.5, "pl_wer_kept": 0.25},
        _train(3, 0.3, None, pl_loss=30.0) | {"pl_wer": 0.4, "pl_wer_kept": 0.2},
    ])
    out = tmp_path / "curves.png"
    plot_runs([("pseudo-labeled", run)], out)
    pl = [(r["series"], int(r["step"]), float(r["value"])) for r in _csv_rows(out.with_suffix(".csv"))
          if r["series"].startswith("pl_wer")]
    assert pl == [("pl_wer", 2, 50.0), ("pl_wer", 3, 40.0), ("pl_wer_kept", 2, 25.0), ("pl_wer_kept", 3, 20.0)]
