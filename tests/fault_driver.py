"""``asr train`` with one fault injected at an optimizer step, for tests/test_faults.py.

    python tests/fault_driver.py --fault kill --at 4 -- key=value ...
    torchrun --nproc-per-node 2 tests/fault_driver.py --fault slow --at 3 --marker FILE -- key=value ...

``kill``: SIGKILL to this process as optimizer step ``at`` (0-based) begins. ``slow``: every
step sleeps ``--sleep`` seconds after it ran, and rank 0 touches ``--marker`` once ``at`` steps
are done, so that a test can send a signal to a run that is certainly under way.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

import asr.train
from asr.cli import main


def inject(fault: str, at: int, marker: Path | None, sleep_s: float) -> None:
    original, taken = asr.train.train_step, [0]

    def train_step(*args, **kwargs):
        if fault == "kill" and taken[0] == at:
            os.kill(os.getpid(), signal.SIGKILL)
        original(*args, **kwargs)
        taken[0] += 1
        if fault == "slow":
            time.sleep(sleep_s)
            if taken[0] == at and marker is not None and os.environ.get("RANK", "0") == "0":
                marker.touch()

    asr.train.train_step = train_step


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--fault", choices=["kill", "slow"], required=True)
    parser.add_argument("--at", type=int, required=True)
    parser.add_argument("--marker", type=Path, default=None)
    parser.add_argument("--sleep", type=float, default=0.3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    inject(args.fault, args.at, args.marker, args.sleep)
    sys.exit(main(["train", *args.overrides]))
