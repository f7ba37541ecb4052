"""The from-scratch EMA-scaling experiment's report: seed bands against data hours, final WERs.

    python -m asr.sweep_report --runs exp/ema_scaling/runs --eval exp/ema_scaling/eval \
        --out exp/ema_scaling/sweep_report

Runs are named ``kappa{K}-{arm}-seed{S}`` (:func:`asr.sweep.plan_scratch`). For every (kappa,
arm) the seeds' dev WER curves of student and teacher, and the pseudo-labels' WER against the
held-out transcripts, are drawn as the seed mean with the seeds' range shaded, against data
hours (the schedule's clock, the same at every kappa). The table gives the final dev WERs of
each run's last dev evaluation (whole splits, greedy; or ``asr eval``'s, given ``--eval``) as mean
and standard deviation over the seeds that finished, and a verdict per
arm: the rule holds where, for student and teacher on every dev split, the arm's mean lies
inside the kappa = 1 seeds' range or within 5% (relative) of their mean.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from asr.plot import read_metrics

RUN_NAME = re.compile(r"^kappa(\d+)-(.+)-seed(\d+)$")
TOLERANCE = 0.05
"""Relative distance from the kappa = 1 mean that still counts as the same dynamics."""


@dataclass(frozen=True)
class Arm:
    kappa: int
    arm: str

    @property
    def label(self) -> str:
        return "kappa 1 (reference)" if self.kappa == 1 else f"kappa {self.kappa}, {self.arm}"


def collect_runs(runs: Path) -> dict[Arm, dict[int, Path]]:
    """Run folders by (kappa, arm) and seed."""
    found: dict[Arm, dict[int, Path]] = defaultdict(dict)
    for folder in sorted(p for p in runs.iterdir() if p.is_dir()):
        match = RUN_NAME.match(folder.name)
        if match and (folder / "metrics.jsonl").exists():
            found[Arm(int(match[1]), match[2])][int(match[3])] = folder
    if not found:
        raise FileNotFoundError(f"{runs}: no run folders named kappa<K>-<arm>-seed<S> with a metrics.jsonl")
    return dict(sorted(found.items(), key=lambda kv: (kv[0].kappa, kv[0].arm)))


def curves(rows: Sequence[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Series of one run's ``metrics.jsonl`` rows (:func:`asr.plot.read_metrics`: a resumed
    run's rows on the timeline it kept): (data hours, value %) for each dev WER and the
    pseudo-labels' WER."""
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        if row["kind"] == "dev_wer":
            for key, value in row.items():
                if "/" in key and value is not None:
                    series[key].append((row["hours"], value))
        elif row["kind"] == "train" and row.get("pl_wer") is not None:
            series["pseudo-labels/unlabeled"].append((row["hours"], 100 * row["pl_wer"]))
    return {k: (np.array([h for h, _ in v]), np.array([x for _, x in v])) for k, v in series.items()}


def band(seed_curves: Sequence[tuple[np.ndarray, np.ndarray]], grid: np.ndarray) -> np.ndarray:
    """[3, len(grid)]: mean, min and max over seeds, each seed interpolated onto ``grid``."""
    values = np.stack([np.interp(grid, h, v, left=np.nan, right=np.nan) for h, v in seed_curves])
    with np.errstate(all="ignore"):
        return np.stack([np.nanmean(values, 0), np.nanmin(values, 0), np.nanmax(values, 0)])


def final_wers(folder: Path, rows: Sequence[dict], eval_dir: Path | None = None) -> dict[str, float]:
    """``{"student/dev-clean": WER %, ...}`` of a finished run: its ``asr eval`` summaries in
    ``eval_dir`` where they exist, else its own last dev evaluation among its ``rows`` (the
    same greedy scoring of the whole splits) if that was made at the end of the schedule. An
    unfinished run has none."""
    out = {}
    for weights in ("student", "teacher"):
        summaries = (eval_dir / f"{folder.name}-{weights}").glob("*/summary.json") if eval_dir else []
        for summary in sorted(summaries):
            data = json.loads(summary.read_text())
            if data.get("wer") is not None:
                out[f"{weights}/{data['split']}"] = 100 * data["wer"]
    if out:
        return out
    dev_rows = [row for row in rows if row["kind"] == "dev_wer"]
    total_hours = OmegaConf.load(folder / "config.yaml").schedule.total_hours
    if not dev_rows or dev_rows[-1]["hours"] < total_hours - 1e-9:
        return {}
    return {k: v for k, v in dev_rows[-1].items() if "/" in k and v is not None}


def verdict(arm_means: dict[str, float], reference: dict[str, list[float]]) -> str:
    """Whether every final WER of an arm is inside the reference seeds' range or within 5%.

    No verdict without something to judge: a reference of fewer than two seeds has no band, and
    an arm missing a final WER that the reference has is not judged on the rest."""
    if not reference or min(len(v) for v in reference.values()) < 2:
        return "no verdict: fewer than 2 finished kappa 1 seeds"
    missing = sorted(set(reference) - set(arm_means))
    if missing:
        return "no verdict: no final " + ", ".join(missing)
    misses = []
    for key, ref in reference.items():
        mean = arm_means[key]
        low, high, ref_mean = min(ref), max(ref), float(np.mean(ref))
        if not (low <= mean <= high or abs(mean - ref_mean) <= TOLERANCE * ref_mean):
            misses.append(f"{key} {mean - ref_mean:+.1f} points")
    if not misses:
        return "holds: inside the kappa 1 band"
    return "outside the kappa 1 band: " + ", ".join(misses)


def write_report(runs: Path, eval_dir: Path | None, out: Path, title: str = "") -> str:
    """Write ``out``.png, .md and .csv; return the markdown."""
    arms = collect_runs(runs)
    rows = {folder: read_metrics(folder) for seeds in arms.values() for folder in seeds.values()}
    all_curves = {arm: {seed: curves(rows[folder]) for seed, folder in seeds.items()} for arm, seeds in arms.items()}
    finals = {arm: {seed: final_wers(folder, rows[folder], eval_dir) for seed, folder in seeds.items()}
              for arm, seeds in arms.items()}
    reference_arm = next((a for a in arms if a.kappa == 1), None)
    reference = defaultdict(list)
    if reference_arm is not None:
        for values in finals[reference_arm].values():
            for key, value in values.items():
                reference[key].append(value)

    keys = sorted({k for per_seed in finals.values() for v in per_seed.values() for k in v})
    lines = [f"# {title or 'EMA scaling from scratch'}", "",
             "Final dev WER % (whole dev splits, greedy), mean +- standard deviation over the seeds that "
             "finished (seeds: finished of started).", "",
             "| run | seeds | " + " | ".join(keys) + " | verdict |",
             "| --- | ---: | " + " | ".join("---:" for _ in keys) + " | --- |"]
    for arm, per_seed in finals.items():
        cells, means = [], {}
        for key in keys:
            values = [v[key] for v in per_seed.values() if key in v]
            if values:
                means[key] = float(np.mean(values))
                cells.append(f"{means[key]:.2f} +- {np.std(values, ddof=1):.2f}" if len(values) > 1
                             else f"{means[key]:.2f} (1 seed)")
            else:
                cells.append("-")
        judged = "reference" if arm == reference_arm else verdict(means, reference)
        finished = sum(1 for v in per_seed.values() if v)
        lines.append(f"| {arm.label} | {finished} of {len(per_seed)} | " + " | ".join(cells) + f" | {judged} |")
    markdown = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(markdown)
    _write_csv(out.with_suffix(".csv"), all_curves)
    _plot(out.with_suffix(".png"), all_curves, reference_arm, title)
    return markdown


def _write_csv(path: Path, all_curves: dict) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["kappa", "arm", "seed", "series", "data_hours", "wer_percent"])
        for arm, per_seed in all_curves.items():
            for seed, series in per_seed.items():
                for name, (hours, values) in series.items():
                    writer.writerows([arm.kappa, arm.arm, seed, name, f"{h:.6g}", f"{v:.4g}"]
                                     for h, v in zip(hours, values, strict=True))


def _plot(path: Path, all_curves: dict, reference_arm: Arm | None, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({n for per_seed in all_curves.values() for s in per_seed.values() for n in s
                    if not n.startswith("pseudo")})
    panels = [*names, "pseudo-labels/unlabeled"]
    cols = 2
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 3.6 * rows), squeeze=False)
    kappas = sorted({a.kappa for a in all_curves})
    colors = {k: plt.cm.tab10(i) for i, k in enumerate(k for k in kappas if k != 1)}
    styles = {"progressive": "-", "rule": "--", "rho-fixed": ":"}
    for ax, name in zip(axes.flat, panels, strict=False):
        for arm, per_seed in all_curves.items():
            seeds = [s[name] for s in per_seed.values() if name in s and len(s[name][0])]
            if not seeds:
                continue
            grid = np.unique(np.concatenate([h for h, _ in seeds]))
            mean, low, high = band(seeds, grid)
            is_ref = arm == reference_arm
            color = "black" if is_ref else colors.get(arm.kappa, "tab:gray")
            ax.plot(grid, mean, color=color, linestyle=styles.get(arm.arm, "-"), lw=2 if is_ref else 1.3,
                    label=f"{arm.label} ({len(seeds)} seeds)")
            ax.fill_between(grid, low, high, color="gray" if is_ref else color, alpha=0.3 if is_ref else 0.12)
        ax.set_title(name + (" WER % vs held-out truth" if name.startswith("pseudo") else " WER %"))
        ax.set_xlabel("data hours")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(title or "EMA scaling from scratch: seed mean, seed range shaded")
    fig.tight_layout(rect=(0, 0.08 + 0.02 * math.ceil(len(labels) / 3), 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asr.sweep_report", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="folder of kappa<K>-<arm>-seed<S> runs")
    parser.add_argument("--eval", type=Path, help="folder of <run>-<student|teacher> asr eval outputs "
                        "(default: each run's own last dev evaluation)")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.png, OUT.md and OUT.csv")
    parser.add_argument("--title", default="", help="title of the plot and the table")
    args = parser.parse_args(argv)
    try:
        print(write_report(args.runs, args.eval, args.out, args.title), end="")
    except FileNotFoundError as err:
        print(f"python -m asr.sweep_report: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
