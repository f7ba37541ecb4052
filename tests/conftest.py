"""Shared fixtures: a tiny synthetic corpus made once per session, and tiny training configs.

The corpus is ``asr synth --size tiny`` (espeak-ng and sox, a few seconds), prepared and
sharded as the recipe does. The configs train a model of about 50k parameters on it: one
optimizer step is 15 s of padded audio (kappa = 1 on one rank), the schedules below are a few
steps long, and a whole run takes a second or two on a CPU.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from asr.config import load_config

STEP_SECONDS = 15.0
"""Audio seconds per optimizer step of the tiny configs at kappa = 1 (scaling.reference_seconds)."""

def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop the whole run at once, with the reason, when torchaudio's binary does not load beside
    this torch: every test below would otherwise fail with the same import error."""
    try:
        import torchaudio  # noqa: F401  (loads libtorchaudio, built against one torch release)
        from torchaudio._extension import _IS_TORCHAUDIO_EXT_AVAILABLE
    except (ImportError, OSError) as err:
        pytest.exit(f"torchaudio does not load beside torch {torch.__version__}: {err}\n"
                    "Install the tested pair with: bash recipes/setup.sh --dev", returncode=3)
    if not _IS_TORCHAUDIO_EXT_AVAILABLE:
        pytest.exit(f"torchaudio's compiled extension is missing (torch {torch.__version__}); "
                    "install the tested pair with: bash recipes/setup.sh --dev", returncode=3)


MINI = Path(__file__).resolve().parents[2] / "shared" / "librispeech-mini"
"""115 real LibriSpeech utterances in the original layout (dev-clean, test-clean, test-other)."""


def hours(steps: float, kappa: float = 1.0) -> float:
    """Hours of audio that ``steps`` optimizer steps stand for at ``kappa``: schedule values."""
    return steps * kappa * STEP_SECONDS / 3600


def tiny_overrides(shards: Path, exp_dir: Path) -> list[str]:
    """A ~50k-parameter CTC transformer, 10 steps in all: supervised for 3, then pseudo-labels."""
    return [
        f"data.shards_dir={shards}", f"train.exp_dir={exp_dir}", "data.dev_splits=[dev-clean]",
        f"data.max_batch_seconds={STEP_SECONDS}", f"data.max_duration={STEP_SECONDS}",
        "data.num_buckets=2", "data.num_workers=0",
        "model.d_model=32", "model.num_layers=1", "model.num_heads=2", "model.ffn_dim=64",
        "model.pos_conv_kernel=8", "model.pos_conv_groups=4",
        f"scaling.reference_seconds={STEP_SECONDS}", "optim.lr=0.002", "ema.rho=0.9",
        f"schedule.total_hours={hours(10)}", f"schedule.warmup_hours={hours(3)}",
        f"pl.start_hours={hours(3)}", "specaug.start_hours=0",
        "train.device=cpu", "train.log_every_steps=1", "train.eval_every_hours=0",
        f"train.checkpoint_every_hours={hours(3)}", "train.keep_last=3",
    ]


@dataclass(frozen=True)
class TinyCorpus:
    librispeech: Path  # LibriSpeech/<split>/<speaker>/<chapter>/...
    manifests: Path  # <split>.jsonl
    shards: Path  # <split>/shard-NNNNNN.tar + index.npz


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test: tiny models and element-wise maths gain nothing from
    threads, which only contend with each other on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> TinyCorpus:
    from asr.data.manifest import prepare_corpus
    from asr.data.shards import shard_manifests
    from asr.data.synth import synthesize_corpus

    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"the synthetic corpus needs {' and '.join(missing)} (installed by recipes/setup.sh)")
    root = tmp_path_factory.mktemp("tiny-corpus")
    librispeech = synthesize_corpus(root / "corpus", size="tiny", seed=0, jobs=2)
    prepare_corpus(root / "corpus", root / "data", jobs=1)
    shard_manifests(root / "data" / "manifests", root / "data" / "shards", shard_utterances=4, jobs=1)
    return TinyCorpus(librispeech, root / "data" / "manifests", root / "data" / "shards")


@pytest.fixture
def make_config(tiny_corpus: TinyCorpus, tmp_path: Path) -> Callable[..., DictConfig]:
    """``make_config(name, *overrides)``: a tiny config whose exp_dir is ``tmp_path / name``."""

    def make(name: str, *overrides: str) -> DictConfig:
        return load_config(None, [*tiny_overrides(tiny_corpus.shards, tmp_path / name), *overrides])

    return make


@pytest.fixture(scope="session")
def trained_run(tiny_corpus: TinyCorpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The experiment folder of one finished tiny run: pseudo-labels from step 3, a dev
    evaluation every 3 steps (so a best.pt), periodic checkpoints at steps 6 and 9, and 10."""
    from asr.train import train

    exp_dir = tmp_path_factory.mktemp("trained") / "tiny"
    cfg = load_config(None, [*tiny_overrides(tiny_corpus.shards, exp_dir), f"train.eval_every_hours={hours(3)}"])
    train(cfg)
    return exp_dir
