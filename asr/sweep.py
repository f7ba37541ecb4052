"""The EMA-scaling sweep's plan: which processes and accumulation reach each kappa, and its runs.

kappa k of a sweep runs on min(k x B, N) processes (B: processes of the kappa = 1 reference,
N: the most processes a run may use) with k x B / processes accumulation steps, so that the
global batch is k reference batches. The supervised warm start has no teacher, so it runs once
per kappa (or once in all, at the first kappa, when shared); the pseudo-labeled continuation
runs with the teacher's momentum scaled (``power``) and unscaled (``none``), except at kappa 1,
where the two coincide.

``python -m asr.sweep --kappas "1 2 4" --nproc 8 --base-nproc 1`` prints the plan, one
tab-separated run a line, for ``recipes/ema_scaling/run.sh``::

    phase  name  kappa  rule  processes  accum_steps  init_from  label
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

RULES = ("power", "none")


@dataclass(frozen=True)
class Launch:
    """How one run reaches its kappa: processes x accumulation steps = kappa x base processes."""

    processes: int
    accum_steps: int


@dataclass(frozen=True)
class Run:
    """One ``asr train`` of the sweep."""

    phase: str  # "warm" (supervised warm start) or "pl" (pseudo-labeled continuation)
    name: str  # its folder under the sweep's runs/
    kappa: int
    rule: str  # scaling.ema_rule; "-" for a warm start (no teacher yet)
    launch: Launch
    init_from: str  # the warm start's name a continuation starts from; "-" for a warm start
    label: str  # legend and table name


def launch_for(kappa: int, *, base_nproc: int, max_nproc: int) -> Launch:
    """Processes and accumulation of kappa: as many processes as allowed, the rest accumulated."""
    units = kappa * base_nproc
    processes = min(units, max_nproc)
    if units % processes:
        raise ValueError(f"kappa {kappa}: {units} reference processes' batch is not a multiple of "
                         f"--nproc {max_nproc}")
    return Launch(processes, units // processes)


def parse_kappas(text: str) -> list[int]:
    """``"1 2 4"`` -> [1, 2, 4]; anything but positive integers is an error naming it."""
    kappas = []
    for word in text.split():
        if not (word.isascii() and word.isdigit() and int(word) > 0):
            raise ValueError(f"--kappas: expected positive integers, got '{word}'")
        kappas.append(int(word))
    if not kappas:
        raise ValueError("--kappas: expected positive integers, got none")
    return kappas


def label(kappa: int, rule: str) -> str:
    if kappa == 1:
        return "kappa 1, reference"
    return f"kappa {kappa}, rho^kappa" if rule == "power" else f"kappa {kappa}, rho unscaled"


def plan_sweep(kappas: Sequence[int], *, base_nproc: int = 1, max_nproc: int = 1,
               shared_warm_start: bool = False) -> list[Run]:
    """Every run of the sweep in order: warm starts, then continuations by kappa and rule.

    Every launch is checked before anything runs, so an impossible kappa fails the sweep at
    once rather than after hours of the runs before it.
    """
    if base_nproc < 1 or max_nproc < 1:
        raise ValueError(f"--base-nproc and --nproc must be >= 1, got {base_nproc} and {max_nproc}")
    launches = {k: launch_for(k, base_nproc=base_nproc, max_nproc=max_nproc) for k in kappas}
    warm = [kappas[0]] if shared_warm_start else list(dict.fromkeys(kappas))
    runs = [Run("warm", f"kappa{k}-warm", k, "-", launches[k], "-", f"kappa {k}, warm start")
            for k in warm]
    for k in dict.fromkeys(kappas):
        start = f"kappa{warm[0] if shared_warm_start else k}-warm"
        for rule in RULES[:1] if k == 1 else RULES:
            runs.append(Run("pl", f"kappa{k}-{rule}", k, rule, launches[k], start, label(k, rule)))
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    """Print the plan; a bad sweep is one line on stderr and exit status 2."""
    parser = argparse.ArgumentParser(prog="python -m asr.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--kappas", required=True, help="e.g. '1 2 4'")
    parser.add_argument("--nproc", type=int, default=1, help="most processes a run may use")
    parser.add_argument("--base-nproc", type=int, default=1, help="processes of the kappa = 1 reference")
    parser.add_argument("--shared-warm-start", action="store_true")
    args = parser.parse_args(argv)
    try:
        runs = plan_sweep(parse_kappas(args.kappas), base_nproc=args.base_nproc,
                          max_nproc=args.nproc, shared_warm_start=args.shared_warm_start)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    for r in runs:
        print("\t".join(map(str, (r.phase, r.name, r.kappa, r.rule, r.launch.processes,
                                  r.launch.accum_steps, r.init_from, r.label))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
