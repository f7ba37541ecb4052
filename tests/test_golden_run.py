"""The golden run: a tiny CPU training whose every logged value and final weights are held
exactly, so the training loop can be reorganised without changing what it computes.

It covers what the loop does: supervised updates, then pseudo-labeled ones from the EMA teacher,
SpecAugment and dropout, gradient accumulation entered through a progressive stage change, dev
evaluation, and a stop and resume in the middle. A change that is meant to alter training
re-records the asset (``ASR_UPDATE_GOLDEN=1 python -m pytest tests/test_golden_run.py``) and says
why in its commit.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import hours

from asr.checkpoint import load_checkpoint
from asr.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

ASSET = Path(__file__).parent / "assets" / "golden_run.json"
OVERRIDES = (
    "model.dropout=0.1", "specaug.policy=LD", f"train.eval_every_hours={hours(3)}",
    f"scaling.progressive=[{{hours: 0, accum_steps: 1}}, {{hours: {hours(4)}, accum_steps: 2}}]",
)
STOP_AT = hours(5)  # inside the accumulation stage and the pseudo-label phase
VALUES = ("loss", "pl_loss", "lr", "kappa", "rho", "grad_norm", "skipped", "pl_batches", "pl_wer")
"""The logged values held exactly; wall-clock rates are not."""


def _digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _corpus_digest(shards: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(shards.rglob("*.tar")):
        h.update(path.relative_to(shards).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def golden_record(make_config, shards: Path) -> dict:
    train(make_config("golden", *OVERRIDES, f"train.stop_hours={STOP_AT}"))
    cfg = make_config("golden", *OVERRIDES)
    train(cfg)  # resumes from the stop
    exp = Path(cfg.train.exp_dir)
    rows = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]
    last = load_checkpoint(exp / "checkpoints" / "last.pt")
    return {
        "corpus": _corpus_digest(shards),
        "train": [{"step": r["step"], **{k: r.get(k) for k in VALUES}} for r in rows if r["kind"] == "train"],
        "dev_wer": [{k: v for k, v in r.items() if k not in ("kind", "hours")} for r in rows if r["kind"] == "dev_wer"],
        "student": _digest(last["student"]),
        "teacher": _digest(last["teacher"]),
        "updates": last["train_state"]["updates"],
    }


def test_the_golden_run_is_unchanged(make_config, tiny_corpus):
    got = golden_record(make_config, tiny_corpus.shards)
    if os.environ.get("ASR_UPDATE_GOLDEN") == "1":
        ASSET.write_text(json.dumps(got, indent=1) + "\n")
    expected = json.loads(ASSET.read_text())
    assert got["corpus"] == expected["corpus"], (
        "the tiny synthetic corpus is not the one the golden run was recorded on (another "
        "espeak-ng or sox?): the golden values cannot be compared")
    assert got["train"] == expected["train"]
    assert got["dev_wer"] == expected["dev_wer"]
    assert (got["updates"], got["student"], got["teacher"]) == (
        expected["updates"], expected["student"], expected["teacher"])
    kinds = {(row["kappa"], row["pl_batches"] > 0) for row in got["train"]}
    assert kinds >= {(1.0, False), (2.0, True)}  # both stages, both kinds of update
