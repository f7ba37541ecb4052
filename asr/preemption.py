"""Preemption: SIGTERM or SIGINT ends a run with one consistent checkpoint, not with nothing.

Clusters preempt with SIGTERM (Slurm, Kubernetes, torchrun forwarding its own SIGTERM to the
workers), people with Ctrl-C. The handler only sets a flag; the loop asks at step boundaries,
where every rank holds the same weights: one process reads the flag every step, at no cost;
several ranks agree every ``train.signal_check_steps`` steps with one all-reduce (a host sync,
which is why it is not every step), so all of them stop after the same step. Then the run saves
and exits with :data:`EXIT_PREEMPTED`; the same command resumes bit-exactly.

Time from the signal to the exit: at most ``train.signal_check_steps`` optimizer steps (one on
a single process) plus one checkpoint save. torchrun and Slurm wait 30 s (by default) after
their SIGTERM before SIGKILL; a run whose steps and save do not fit in that should lower
``train.signal_check_steps`` or raise the launcher's grace period. A second signal stops at
once, as without the handler.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from asr.runtime import Runtime

EXIT_PREEMPTED = 75
"""Exit status of a run stopped by SIGTERM/SIGINT after saving its checkpoint: EX_TEMPFAIL of
sysexits.h, "try again later". Distinct from a crash (1), a refused config (2) and a process
killed by the signal itself (143, or -15 as Python's subprocess reports it)."""

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignal:
    """Notes SIGTERM/SIGINT in a flag; :meth:`requested` tells the loop, the same on every rank."""

    def __init__(self, rt: Runtime, check_every_steps: int) -> None:
        self.rt = rt
        self.check_every_steps = check_every_steps
        self.received: int | None = None
        self._previous: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():  # handlers live in the main thread
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:  # the second signal: do not wait for the step to end
            self.restore()
            signal.raise_signal(signum)
            return
        self.received = signum

    def requested(self, step: int) -> bool:
        """Whether to stop after optimizer step ``step``; call on every rank after every step."""
        if self.rt.world_size == 1:
            return self.received is not None
        if step % self.check_every_steps:
            return False
        return self.rt.any_rank(self.received is not None)

    def describe(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else "a signal on another rank"

    def restore(self) -> None:
        """Put the handlers found at construction back."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous = {}
