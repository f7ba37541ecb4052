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

``--from-scratch`` plans the experiment of Busbridge et al. instead: every run trains from step
0 (supervised, then pseudo-labeled, in one ``asr train``), for every seed, in three arms at each
kappa > 1 (:data:`ARMS`); at kappa 1 the arms coincide in one reference run per seed. One line a
run::

    scratch  name  kappa  arm  processes  accum_steps  seed  label  overrides
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


ARMS = {
    "progressive": "rho^kappa + optimizer rule + progressive batch",
    "rule": "rho^kappa + optimizer rule, full batch from step 0",
    "rho-fixed": "rho fixed + optimizer rule + progressive batch",
}
"""The from-scratch arms: the full method, the method without the batch ramp, and the method
with the teacher's momentum left unscaled (the ramp kept, so only the EMA rule differs)."""


@dataclass(frozen=True)
class ScratchRun:
    """One ``asr train`` from step 0 of the from-scratch experiment."""

    name: str
    kappa: int
    arm: str  # a key of ARMS, or "reference" at kappa 1
    launch: Launch
    seed: int
    overrides: tuple[str, ...]  # key=value for asr train

    @property
    def label(self) -> str:
        return "kappa 1, reference" if self.arm == "reference" else f"kappa {self.kappa}, {ARMS[self.arm]}"


def progressive_ramp(launch: Launch, ramp_hours: float) -> list[tuple[float, int]]:
    """The batch ramp of a run: (data hours, accumulation steps) stages, doubling every
    ``ramp_hours`` from one micro-batch a process up to the run's accumulation. The ramp keeps
    the early steps, where the optimizer's square-root rule does not hold (it needs a small lr
    per step relative to the loss' curvature), at the reference batch, and reaches the full
    kappa once the run is past its warm-up."""
    if ramp_hours <= 0:
        raise ValueError(f"--ramp-hours: expected positive hours, got {ramp_hours}")
    stages, accum = [(0.0, 1)], 1
    while accum < launch.accum_steps:
        accum = min(2 * accum, launch.accum_steps)
        stages.append((len(stages) * ramp_hours, accum))
    return stages


def plan_scratch(kappas: Sequence[int], seeds: Sequence[int], *, arms: Sequence[str] = tuple(ARMS),
                 base_nproc: int = 1, max_nproc: int = 1, ramp_hours: float = 1.0) -> list[ScratchRun]:
    """Every from-scratch run, seed by seed (so a cut-short sweep still has whole seeds)."""
    unknown = [arm for arm in arms if arm not in ARMS]
    if unknown:
        raise ValueError(f"--arms: unknown {', '.join(unknown)}; expected some of {', '.join(ARMS)}")
    launches = {k: launch_for(k, base_nproc=base_nproc, max_nproc=max_nproc) for k in kappas}
    runs = []
    for seed in seeds:
        for k in dict.fromkeys(kappas):
            for arm in ["reference"] if k == 1 else arms:
                launch = launches[k]
                overrides = [f"train.seed={seed}", f"data.seed={seed}",
                             "scaling.ema_rule=" + ("none" if arm == "rho-fixed" else "power")]
                if arm in ("progressive", "rho-fixed") and launch.accum_steps > 1:
                    stages = ",".join(f'{{"hours":{h:g},"accum_steps":{a}}}'
                                      for h, a in progressive_ramp(launch, ramp_hours))
                    overrides.append(f"scaling.progressive=[{stages}]")
                else:
                    overrides.append(f"train.accum_steps={launch.accum_steps}")
                runs.append(ScratchRun(f"kappa{k}-{arm}-seed{seed}", k, arm, launch, seed, tuple(overrides)))
    return runs


def parse_seeds(text: str) -> list[int]:
    """``"0 1 2"`` -> [0, 1, 2]; anything but integers >= 0 is an error naming it."""
    words = text.split()
    if not words or not all(w.isascii() and w.isdigit() for w in words):
        raise ValueError(f"--seeds: expected integers >= 0, got '{text}'")
    return [int(w) for w in words]


def main(argv: Sequence[str] | None = None) -> int:
    """Print the plan; a bad sweep is one line on stderr and exit status 2."""
    parser = argparse.ArgumentParser(prog="python -m asr.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--kappas", required=True, help="e.g. '1 2 4'")
    parser.add_argument("--nproc", type=int, default=1, help="most processes a run may use")
    parser.add_argument("--base-nproc", type=int, default=1, help="processes of the kappa = 1 reference")
    parser.add_argument("--shared-warm-start", action="store_true")
    parser.add_argument("--from-scratch", action="store_true", help="every run from step 0, in arms and seeds")
    parser.add_argument("--seeds", default="0", help="from scratch: e.g. '0 1 2'")
    parser.add_argument("--arms", default=" ".join(ARMS), help=f"from scratch: some of {', '.join(ARMS)}")
    parser.add_argument("--ramp-hours", type=float, default=1.0,
                        help="from scratch: data hours between doublings of the progressive batch")
    args = parser.parse_args(argv)
    try:
        if args.from_scratch:
            scratch = plan_scratch(parse_kappas(args.kappas), parse_seeds(args.seeds), arms=args.arms.split(),
                                   base_nproc=args.base_nproc, max_nproc=args.nproc, ramp_hours=args.ramp_hours)
        else:
            runs = plan_sweep(parse_kappas(args.kappas), base_nproc=args.base_nproc,
                              max_nproc=args.nproc, shared_warm_start=args.shared_warm_start)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    if args.from_scratch:
        for r in scratch:
            print("\t".join(map(str, ("scratch", r.name, r.kappa, r.arm, r.launch.processes,
                                      r.launch.accum_steps, r.seed, r.label, " ".join(r.overrides)))))
        return 0
    for r in runs:
        print("\t".join(map(str, (r.phase, r.name, r.kappa, r.rule, r.launch.processes,
                                  r.launch.accum_steps, r.init_from, r.label))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
