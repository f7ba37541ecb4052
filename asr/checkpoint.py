"""Checkpoints: one file per save, written atomically, loadable with ``weights_only=True``.

A checkpoint holds everything a run needs to continue exactly (DESIGN.md contract): student,
teacher, optimizer, step, data positions, RNG states, the resolved config, the history of
kappa and the tokenizer itself, so that ``asr eval`` decodes with the same units.

Layout of ``<exp_dir>/checkpoints/``::

    update-00001200.pt   periodic saves, named by optimizer updates taken (never re-counted, so
                         name order is save order); only the newest ``keep_last`` are kept
    last.pt              hard link to the newest periodic save (replaced atomically)
    best.pt              hard link to the save with the lowest dev WER
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from asr.fileio import atomic_path

CHECKPOINT_VERSION = 1
_STEP_FILE = re.compile(r"^update-(\d{8})\.pt$")


def _atomic_link(target: Path, link: Path) -> None:
    with atomic_path(link) as tmp:
        try:
            os.link(target, tmp)
        except OSError:  # filesystems without hard links: fall back to a copy
            torch.save(torch.load(target, map_location="cpu", weights_only=True), tmp)


def save_checkpoint(payload: dict[str, Any], ckpt_dir: str | Path, updates: int, *,
                    keep_last: int, is_best: bool = False) -> Path:
    """Write ``update-NNNNNNNN.pt`` atomically, point ``last.pt`` (and ``best.pt``) at it, prune."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"update-{updates:08d}.pt"
    # fsync: on disk before the rename publishes it; an interrupted save leaves no partial file
    with atomic_path(path, fsync=True) as tmp:
        torch.save({"version": CHECKPOINT_VERSION, **payload}, tmp)
    _atomic_link(path, ckpt_dir / "last.pt")
    if is_best:
        _atomic_link(path, ckpt_dir / "best.pt")
    for old in list_checkpoints(ckpt_dir)[:-keep_last]:
        old.unlink()  # best.pt and last.pt are links of their own and survive
    return path


def list_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Periodic checkpoints of a folder, oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if _STEP_FILE.match(p.name))


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a folder (an experiment or its ``checkpoints/``) -> its ``last.pt``."""
    path = Path(path)
    for candidate in (path, path / "last.pt", path / "checkpoints" / "last.pt"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no checkpoint at {path} (expected a .pt file or a folder with last.pt)")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load on the CPU with ``weights_only=True`` (no arbitrary code runs from the file)."""
    path = resolve_checkpoint(path)
    payload = torch.load(path, map_location="cpu", weights_only=True)
    version = payload.get("version") if isinstance(payload, dict) else None
    if version != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint format version {version!r}, expected {CHECKPOINT_VERSION}")
    return payload


def average_state_dicts(paths: list[Path], key: str) -> dict[str, torch.Tensor]:
    """Element-wise mean of ``payload[key]`` over checkpoints, summed in float64 and returned in
    each tensor's own dtype; integer tensors (counters) are taken from the last checkpoint."""
    if not paths:
        raise ValueError("average_state_dicts needs at least one checkpoint")
    total: dict[str, torch.Tensor] = {}
    last: dict[str, torch.Tensor] = {}
    for path in paths:
        state = load_checkpoint(path).get(key)
        if state is None:
            raise ValueError(f"{path}: checkpoint has no '{key}' weights")
        if last and set(state) != set(last):
            raise ValueError(f"{path}: '{key}' weights have other tensor names than {paths[0]}'s: "
                             f"{sorted(set(state) ^ set(last))[:5]}")
        for name, tensor in state.items():
            if tensor.is_floating_point():
                total[name] = total[name] + tensor.double() if name in total else tensor.double()
        last = state
    return {name: (total[name] / len(paths)).to(t.dtype) if t.is_floating_point() else t
            for name, t in last.items()}
