"""The installed environment is the tested one: torchaudio's binary works beside this torch, and
every package is at the version recipes/constraints.txt pins."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
import torchaudio

from asr.data.features import LogMelFeatures

REPO = Path(__file__).resolve().parents[1]
CONSTRAINTS = REPO / "recipes" / "constraints.txt"
TORCH_FAMILY = re.compile(r"^(torch|torchaudio|triton|nvidia-.*|cuda-.*)$")
"""Packages that ASR_TORCH may replace together with the torch/torchaudio pair."""


def _release(text: str) -> str:
    return text.split("+")[0]


def _pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, pinned = line.partition("==")
            assert sep, f"{CONSTRAINTS}: expected NAME==VERSION, got {line!r}"
            pins[name] = pinned
    return pins


def test_torchaudio_compiled_extension_runs_beside_this_torch():
    from torchaudio._extension import _IS_TORCHAUDIO_EXT_AVAILABLE

    assert _IS_TORCHAUDIO_EXT_AVAILABLE
    assert _release(torchaudio.__version__) == _release(torch.__version__)  # built as a pair
    # forced_align is a C++ op of libtorchaudio: it runs only if the binary matches this torch.
    log_probs = torch.randn(1, 6, 4).log_softmax(-1)
    labels, scores = torchaudio.functional.forced_align(log_probs, torch.tensor([[1, 2]]), blank=0)
    assert labels.shape == scores.shape == (1, 6)
    assert set(labels[0].tolist()) <= {0, 1, 2}


def test_log_mel_features_compute_on_this_install():
    waves = torch.randn(2, 16000)
    feats, lengths = LogMelFeatures()(waves, torch.tensor([16000, 8000]))
    assert feats.shape == (2, 98, 80) and lengths.tolist() == [98, 48]
    assert torch.isfinite(feats).all()


def test_every_installed_package_is_at_its_pinned_version():
    pins = _pins()
    assert {"torch", "torchaudio", "omegaconf", "sentencepiece", "pytest"} <= pins.keys()
    torch_pinned = _release(torch.__version__) == pins["torch"]
    wrong = []
    for name, pinned in pins.items():
        if TORCH_FAMILY.match(name) and not torch_pinned:
            continue  # another pair was asked for with ASR_TORCH; the pair test above holds it
        try:
            installed = version(name)
        except PackageNotFoundError:
            continue  # a platform-specific dependency (CUDA libraries) this machine does not use
        if _release(installed) != pinned:
            wrong.append(f"{name} {installed} (pinned {pinned})")
    assert not wrong, f"not the tested set; re-run bash recipes/setup.sh --dev: {wrong}"


def test_version_flag_names_what_a_bug_report_needs():
    out = subprocess.run([sys.executable, "-m", "asr", "--version"], capture_output=True, text=True,
                         check=True).stdout
    assert out.splitlines()[0].startswith("asr ")
    for name in ("python ", f"torch {torch.__version__}", "CUDA ", f"torchaudio {torchaudio.__version__}"):
        assert name in out, out
