"""Training curves of several runs against hours of audio seen (``asr plot``).

Runs at different kappa take different numbers of optimizer steps for the same data, so the
x axis is the exact audio hours seen that the trainer writes in every row of
``<exp_dir>/metrics.jsonl``, never the step. Two panels: the dev WER of the student on the
first dev split (solid) and of its EMA teacher (dashed), and the training CTC loss of labeled
(solid) and pseudo-labeled (dashed) micro-batches; one colour a run. The plotted points are
also written as CSV beside the figure, for tables and other tools.

matplotlib is used through its object API (``Figure``, whose ``savefig`` renders with Agg), not
pyplot: no global backend or figure state.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

METRICS = ("dev_wer", "loss", "pl_wer")
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")


@dataclass(frozen=True)
class Series:
    """One plotted line: a metric of one run at increasing steps."""

    run: str
    name: str  # a metrics.jsonl key: "student/dev-clean", "teacher/dev-clean", "loss", "pl_loss"
    steps: tuple[int, ...]
    hours: tuple[float, ...]  # data hours (the schedule's clock) at each step
    values: tuple[float, ...]


def read_metrics(exp_dirs: str | Path | Sequence[str | Path]) -> list[dict[str, Any]]:
    """The rows of each ``<exp_dir>/metrics.jsonl`` on one timeline of audio seen.

    Rows are read in order (``exp_dirs`` in the order given, a parent before the run continued
    from it with ``train.init_from``). A row of some kind at ``h`` hours replaces every earlier row
    of that kind at ``h`` or later: a resumed run goes back to its last checkpoint and logs those
    hours again, and a continuation may count steps at another kappa, so hours, not steps, say
    which rows belong to the timeline that was kept.
    """
    if isinstance(exp_dirs, (str, Path)):
        exp_dirs = [exp_dirs]
    kept: dict[str, list[dict[str, Any]]] = {}
    for exp_dir in exp_dirs:
        path = Path(exp_dir) / "metrics.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found (expected the exp_dir of an `asr train` run)")
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    if not line.endswith("\n"):  # the last row of a writer killed mid-line
                        print(f"asr plot: {path}:{number}: ignoring a torn last line", file=sys.stderr)
                        break
                    raise ValueError(f"{path}:{number}: not a JSON object ({err.msg})") from None
                if not isinstance(row, dict) or not {"kind", "step", "hours"} <= row.keys():
                    raise ValueError(f"{path}:{number}: expected a JSON object with kind, step and hours")
                timeline = kept.setdefault(str(row["kind"]), [])
                while timeline and float(timeline[-1]["hours"]) >= float(row["hours"]):
                    timeline.pop()
                timeline.append(row)
    return sorted((row for rows in kept.values() for row in rows),
                  key=lambda row: (float(row["hours"]), str(row["kind"])))


def run_series(run: str, rows: Sequence[dict[str, Any]], metric: str) -> list[Series]:
    """The lines of one run for ``metric``: ``dev_wer`` (student and teacher on the first dev
    split), ``loss`` (labeled and pseudo-labeled CTC loss) or ``pl_wer`` (the pseudo-labels' WER %
    against held-out truth, before and after the filters); lines without a point are left out."""
    if metric == "dev_wer":
        kind_rows = [row for row in rows if row["kind"] == "dev_wer"]
        student = next((key for row in kind_rows for key in row if key.startswith("student/")), None)
        names = [] if student is None else [student, "teacher/" + student.removeprefix("student/")]
    elif metric == "loss":
        kind_rows = [row for row in rows if row["kind"] == "train"]
        names = ["loss", "pl_loss"]
    elif metric == "pl_wer":
        kind_rows = [row for row in rows if row["kind"] == "train"]
        names = ["pl_wer", "pl_wer_kept"]
    else:
        raise ValueError(f"metric: expected one of {', '.join(METRICS)}, got {metric!r}")
    series = []
    for name in names:
        scale = 100.0 if metric == "pl_wer" else 1.0  # a fraction in the log, a percentage here
        points = [(int(row["step"]), float(row["hours"]), scale * float(row[name]))
                  for row in kind_rows if _plottable(metric, row.get(name))]
        if points:
            steps, hours, values = zip(*points, strict=True)
            series.append(Series(run, name, steps, hours, values))
    return series


def _plottable(metric: str, value: Any) -> bool:
    # null: a logging interval without a batch of that kind (e.g. only pseudo-labeled updates)
    return value is not None and math.isfinite(float(value))


def plot_runs(runs: Sequence[tuple[str, str | Path | Sequence[str | Path]]], out: str | Path, *,
              metric: str | None = None, title: str | None = None) -> Path:
    """Draw ``runs`` (legend name, exp_dir or exp_dirs) into ``out`` and write the points to ``out`` with a
    ``.csv`` suffix, which is returned. ``metric`` keeps one panel (default: both)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import LogFormatter

    out = Path(out)
    if out.suffix.lower() not in FIGURE_SUFFIXES:
        raise ValueError(f"--out {out}: expected a figure file ending in {', '.join(FIGURE_SUFFIXES)}")
    names = [name for name, _ in runs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if not runs or duplicates:
        raise ValueError(f"--runs: expected distinct run names, got {', '.join(duplicates) or 'none'}")
    metrics = [metric] if metric is not None else list(METRICS)
    if any(m not in METRICS for m in metrics):
        raise ValueError(f"metric: expected one of {', '.join(METRICS)}, got {metric!r}")

    panels: dict[str, list[Series]] = {m: [] for m in metrics}
    for name, exp_dirs in runs:
        rows = read_metrics(exp_dirs)
        for m in metrics:
            panels[m] += run_series(name, rows, m)
    if not any(panels.values()):
        raise ValueError(f"nothing to plot: no {' or '.join(metrics)} values in the metrics.jsonl "
                         f"of {', '.join(names)}")
    if metric is None:  # the default panels: those with something to show
        metrics = [m for m in metrics if panels[m]]

    colors = {name: f"C{i % 10}" for i, name in enumerate(names)}
    fig = Figure(figsize=(6.4 * len(metrics), 4.8), layout="constrained")
    for ax, m in zip(fig.subplots(1, len(metrics), squeeze=False)[0], metrics, strict=True):
        for s in panels[m]:
            dashed = s.name.startswith("teacher/") or s.name in ("pl_loss", "pl_wer_kept")
            ax.plot(s.hours, s.values, color=colors[s.run], linestyle="--" if dashed else "-",
                    marker="o" if m == "dev_wer" else None, markersize=3, linewidth=1.4)
        ax.set_xlabel("data seen (hours)")
        ax.grid(alpha=0.3)
        if m == "dev_wer":
            split = next((s.name.split("/", 1)[1] for s in panels[m]), "dev")
            ax.set_ylabel(f"WER % on {split}")
            ax.set_ylim(bottom=0)
            styles = [("student", "-"), ("EMA teacher", "--")]
        elif m == "pl_wer":
            ax.set_ylabel("pseudo-label WER % vs held-out truth")
            ax.set_ylim(bottom=0)
            styles = [("all labels", "-"), ("kept by the filters", "--")]
        else:
            ax.set_ylabel("training CTC loss per utterance")
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(LogFormatter())  # 20, 30, 100 rather than 2 x 10^1
            ax.yaxis.set_minor_formatter(LogFormatter(minor_thresholds=(2, 0.5)))
            styles = [("labeled", "-"), ("pseudo-labeled", "--")]
        ax.legend(handles=[Line2D([], [], color="0.3", linestyle=ls, label=label) for label, ls in styles],
                  loc="best", fontsize="small")
    fig.legend(handles=[Line2D([], [], color=colors[name], linewidth=2.5, label=name) for name in names],
               loc="outside lower center", ncols=min(len(names), 4), fontsize="small")
    if title:
        fig.suptitle(title)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)

    csv_path = out.with_suffix(".csv")
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "series", "step", "hours", "value"])
        for m in metrics:
            for s in panels[m]:
                writer.writerows((s.run, s.name, step, f"{h:.6f}", f"{v:.6g}")
                                 for step, h, v in zip(s.steps, s.hours, s.values, strict=True))
    return csv_path
