"""What the training loop reports: at the logging cadence one progress line, one metrics row
and the checks that need the host (non-finite runs, bad data, the wall-clock budget); at the
evaluation cadence the dev WER of student and teacher.

Both run on every rank at the same step: the device-side sums are read once
(:meth:`asr.metrics.Meter.flush`), the bad-data counts are summed over the ranks, the dev sets
are decoded in shares, and every rank takes the same decision.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from asr.evaluate import dev_wer
from asr.progress import format_duration

if TYPE_CHECKING:
    from asr.scaling import SchedulePoint
    from asr.train import Run


class Progress:
    """The logging cadence of one run; ``save`` writes a checkpoint before a stop for non-finite
    steps."""

    def __init__(self, run: Run, save: Callable[[Run], None]) -> None:
        self.run, self.save = run, save
        self.t_start, self.step_at_start = time.perf_counter(), run.state.step
        self.audio_at_start = run.audio_hours()
        self.t_last = self.t_start

    def log(self, point: SchedulePoint) -> bool:
        """Write the interval's line and row; False when the run must stop now."""
        run, state, cfg = self.run, self.run.state, self.run.cfg
        stats = run.meter.flush()
        run.sync_bad_data()
        skipped = run.bad.skipped()
        now = time.perf_counter()
        elapsed, interval, self.t_last = now - self.t_start, now - self.t_last, now
        data_wait = stats.pop("data_wait_s") / max(interval, 1e-9)
        hours, audio = run.schedule.hours_at(state.step), run.audio_hours()
        rate = (audio - self.audio_at_start) / max(elapsed / 3600, 1e-9)
        stop = run.schedule.stop_step
        eta = (stop - state.step) * elapsed / max(state.step - self.step_at_start, 1)
        teacher = run.parts.teacher is not None
        lr = run.parts.optimizer.param_groups[0]["lr"]
        run.rt.log(f"step {state.step}/{stop} | {hours:.2f} data-h ({audio:.2f} h audio)"
                   + (f" | loss {stats['loss']:.3f}" if stats["batches"] else "")
                   + (f" | pl-loss {stats['pl_loss']:.3f}" if stats["pl_batches"] else "")
                   + f" | lr {lr:.2e} | kappa {run.values.kappa:g}"
                   + (f" | rho {run.values.rho:.5f}" if teacher else "")
                   + (f" | {skipped} bad utterances skipped" if skipped else "")
                   + f" | {rate:.0f} audio-h/h | data wait {100 * data_wait:.1f}% | ETA {format_duration(eta)}")
        if run.writer is not None:
            run.writer.write("train", state.step, hours, {
                **stats, "audio_hours": audio, "lr": lr, "kappa": run.values.kappa,
                "rho": run.values.rho if teacher else float("nan"), "audio_hours_per_hour": rate,
                "data_wait_share": data_wait,
                "skipped_utterances": skipped})
        run.bad.check()
        longest = run.skipped.read_longest()
        if longest >= cfg.train.max_nonfinite_in_row:
            self.save(run)
            raise RuntimeError(
                f"{longest} optimizer steps in a row had a non-finite loss or gradient "
                f"(train.max_nonfinite_in_row={cfg.train.max_nonfinite_in_row}); "
                f"stopped, state saved in {run.exp_dir / 'checkpoints' / 'last.pt'}")
        if cfg.train.max_minutes and run.rt.any_rank(elapsed / 60 > cfg.train.max_minutes):
            run.rt.log(f"wall-clock budget of {cfg.train.max_minutes:g} min spent: stopping")
            return False
        return True


def evaluate_dev(run: Run) -> bool:
    """Greedy dev WER of student and teacher; True when the student's is a new best."""
    rt, parts, state = run.rt, run.parts, run.state
    line, first_wer, values = [], None, {}
    nets = [("student", parts.model)] + ([("teacher", parts.teacher.module)] if parts.teacher else [])
    for label, net in nets:
        for name, index in run.dev.items():
            wer = dev_wer(net, parts.features, index, parts.tokenizer, rt.device, rank=rt.rank,
                          world_size=rt.world_size, batch_seconds=run.cfg.eval.batch_seconds,
                          autocast_dtype=rt.autocast_dtype)
            line.append(f"{label} {name} {100 * wer:.2f}")
            values[f"{label}/{name}"] = 100 * wer
            first_wer = wer if first_wer is None else first_wer
    rt.log(f"dev WER % at step {state.step}: " + " | ".join(line))
    if run.writer is not None:
        run.writer.write("dev_wer", state.step, run.schedule.hours_at(state.step), values)
    if first_wer is not None and first_wer < state.best_dev_wer:
        state.best_dev_wer = first_wer
        return True
    return False
