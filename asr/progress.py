"""Progress of long jobs: a tqdm bar on a terminal, a plain line every so often in a log.

A bar redrawn with carriage returns is what a person watching wants and what a log file
cannot hold (one line of thousands of redraws), so the output depends on where stderr goes:
a terminal gets tqdm, anything else gets ``label: done/total unit (pct), rate, ETA`` lines at
most every ``every_seconds`` and one closing line with the elapsed time.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")

LOG_EVERY_SECONDS = 30.0
"""Seconds between two progress lines when stderr is not a terminal."""


def format_duration(seconds: float) -> str:
    """``1h02m``, ``3m07s`` or ``12s``: short enough for a progress line; ``?`` if unknown."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """Count work done towards ``total`` (``None``: unknown) in ``unit`` (files, utts, s...).

    Use as a context manager, or call :meth:`close`. ``live=None`` picks tqdm when ``stream``
    is a terminal.
    """

    def __init__(self, label: str, total: float | None = None, *, unit: str = "it",
                 every_seconds: float = LOG_EVERY_SECONDS, stream: TextIO | None = None,
                 live: bool | None = None) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.every_seconds = every_seconds
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0.0
        self._start = self._last = time.monotonic()
        self._closed = False
        self._bar = None
        if live if live is not None else self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=label, unit=unit, file=self.stream, dynamic_ncols=True,
                             unit_scale=isinstance(total, float))

    def update(self, n: float = 1) -> None:
        """Add ``n`` units of finished work."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.every_seconds:
            self._last = now
            print(self.line(now), file=self.stream, flush=True)

    def line(self, now: float | None = None) -> str:
        """The log line: done/total, percentage, rate and the time left at that rate."""
        elapsed = (now if now is not None else time.monotonic()) - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        text = f"{self.label}: {_number(self.done)}"
        if self.total:
            text += f"/{_number(self.total)} {self.unit} ({100 * self.done / self.total:.0f}%)"
        else:
            text += f" {self.unit}"
        text += f", {rate:.3g} {self.unit}/s"
        if self.total and rate > 0:
            text += f", ETA {format_duration((self.total - self.done) / rate)}"
        return text

    def close(self) -> None:
        """Finish the bar, or print the closing line (done, elapsed, mean rate)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
            return
        elapsed = time.monotonic() - self._start
        rate = f" ({self.done / elapsed:.3g} {self.unit}/s)" if elapsed > 0 else ""
        print(f"{self.label}: {_number(self.done)} {self.unit} in {format_duration(elapsed)}{rate}",
              file=self.stream, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(items: Iterable[T], label: str, *, total: int | None = None, unit: str = "it",
          every_seconds: float = LOG_EVERY_SECONDS) -> Iterator[T]:
    """Yield ``items``, counting one unit each (``total`` defaults to ``len(items)``)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(label, total, unit=unit, every_seconds=every_seconds) as progress:
        for item in items:
            yield item
            progress.update()


def _number(x: float) -> str:
    return f"{x:.1f}" if isinstance(x, float) and not x.is_integer() else f"{int(x)}"
