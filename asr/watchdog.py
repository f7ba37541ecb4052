"""Naming the rank that stalled: a collective that times out says only that it waited.

With several ranks, a rank that stops (SIGSTOP, a dead host, a crashed process) leaves the
others waiting in their next collective until ``train.collective_timeout_s`` ends it (set in
:func:`asr.runtime.setup_runtime`). The error gloo or NCCL raises then names no peer. So every
rank beats: a daemon thread bumps a counter in the process group's store every
``period_s`` seconds, with the optimizer step the rank is at. After a failed collective the
rank that caught it reads the counters twice, a few periods apart: the ranks whose counter did
not move are the ones that stopped. A live rank stuck in a kernel or a collective still beats,
and the message says so. One store write a second per rank; nothing on the device.
"""

from __future__ import annotations

import contextlib
import datetime
import threading
import time

import torch.distributed as dist

from asr.runtime import Runtime

_KEY = "asr/heartbeat/{}"


class Heartbeat:
    """One rank's heartbeat in the store; :meth:`diagnose` names the ranks that went silent."""

    def __init__(self, rt: Runtime, period_s: float = 1.0) -> None:
        self.rt, self.period_s = rt, period_s
        self._step = 0
        self._stop, self._wake = threading.Event(), threading.Event()
        self._store = dist.distributed_c10d._get_default_store() if rt.world_size > 1 else None
        self._thread = None
        if self._store is not None:
            self._beats = 0
            self._thread = threading.Thread(target=self._run, name="asr-heartbeat", daemon=True)
            self._thread.start()

    @property
    def step(self) -> int:
        """The optimizer steps this rank has finished (set by the loop, published at once)."""
        return self._step

    @step.setter
    def step(self, value: int) -> None:
        self._step = value
        self._wake.set()  # the thread writes it now, not at the next period

    def _run(self) -> None:
        while not self._stop.is_set():
            self._beats += 1
            with contextlib.suppress(Exception):  # the store may be gone at the end of a job
                self._store.set(_KEY.format(self.rt.rank), f"{self._beats} {self._step}")
            self._wake.wait(self.period_s)
            self._wake.clear()

    def _read(self) -> dict[int, tuple[int, int] | None]:
        beats: dict[int, tuple[int, int] | None] = {}
        for rank in range(self.rt.world_size):
            try:
                count, step = self._store.get(_KEY.format(rank)).decode().split()
                beats[rank] = (int(count), int(step))
            except Exception:  # no beat yet, or the store is down
                beats[rank] = None
        return beats

    def diagnose(self) -> str:
        """Which ranks stopped beating (a few seconds of watching), as a sentence."""
        if self._store is None:
            return ""
        self._store.set_timeout(datetime.timedelta(seconds=max(5 * self.period_s, 5)))
        first = self._read()
        time.sleep(3 * self.period_s)
        second = self._read()
        if all(beat is None for beat in second.values()):
            return "the rendezvous store does not answer (the host of rank 0 or of torchrun may be gone)"
        silent = [rank for rank in range(self.rt.world_size)
                  if second[rank] is None or first[rank] == second[rank]]
        if not silent:
            return "every rank is alive: one may be stuck in a kernel or in another collective"
        where = ", ".join(f"rank {rank}" + (f" (last at step {second[rank][1]})" if second[rank] else "")
                          for rank in silent)
        return f"stopped responding: {where} (stopped, killed, or its host unreachable)"

    def stall_error(self, err: BaseException, step: int, timeout_s: float) -> RuntimeError:
        """The error a failed collective ends the job with: this rank, the step, who stalled."""
        return RuntimeError(
            f"rank {self.rt.rank}: a collective failed or waited longer than train.collective_timeout_s="
            f"{timeout_s:g} s after {step} optimizer steps; {self.diagnose()}. The checkpoints on disk "
            f"are intact: the same command resumes from the last one ({type(err).__name__}: {err})")

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * self.period_s)  # a dead store must not hold the exit


def is_collective_failure(err: BaseException) -> bool:
    """A failed collective (a timeout, or a peer that closed its connection), by torch's
    exception types and gloo's wording, which raises plain RuntimeErrors."""
    text = str(err).lower()
    return isinstance(err, dist.DistError) or (
        isinstance(err, RuntimeError) and any(word in text for word in ("timed out", "timeout", "connection closed",
                                                                          "connection reset", "gloo")))
