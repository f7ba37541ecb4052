"""`asr export`: TorchScript and ONNX files with the log-mel front-end inside, equal to the
eager model within the stated tolerance at other batch sizes and lengths, and usable where
the ``asr`` package cannot be imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import MINI

from asr.cli import main
from asr.data.features import LogMelFeatures
from asr.export import TOLERANCE, ConvMelSpectrogram, exportable_features
from asr.transcribe import Transcriber

FILES = sorted((MINI / "LibriSpeech" / "test-clean").rglob("*.flac"))
needs_mini = pytest.mark.skipif(not (MINI / "LibriSpeech").is_dir(),
                                reason=f"needs the real-speech set ../shared/librispeech-mini, not found at {MINI}")

# Runs a script with `import asr` made impossible: the exported folder must need torch or
# onnxruntime, numpy and soundfile only.
NO_ASR = """
import importlib.abc, runpy, sys
class NoAsr(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "asr" or name.startswith("asr."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)")
sys.meta_path.insert(0, NoAsr())
try:
    import asr
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("asr is importable")
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize(("sample_rate", "n_mels", "win_ms", "hop_ms", "normalize"), [
    (16000, 80, 25.0, 10.0, "utterance"),
    (16000, 40, 20.0, 10.0, "none"),
    (8000, 64, 32.0, 8.0, "utterance"),
])
def test_conv_spectrogram_equals_torchaudio_logmel(sample_rate, n_mels, win_ms, hop_ms, normalize):
    features = LogMelFeatures(sample_rate, n_mels, win_ms, hop_ms, normalize)
    export = exportable_features(features)
    assert isinstance(export.mel, ConvMelSpectrogram)
    gen = torch.Generator().manual_seed(0)
    waves = 0.1 * torch.randn(3, sample_rate * 2, generator=gen)
    lengths = torch.tensor([sample_rate * 2, sample_rate, sample_rate // 3])
    power, conv_power = features.mel(waves), export.mel(waves)
    assert ((conv_power - power).abs() / power.abs().amax()).max() < 1e-5
    (expected, n1), (found, n2) = features(waves, lengths), export(waves, lengths)
    assert torch.equal(n1, n2)
    assert (found - expected).abs().max() < 1e-3  # log-mel, utterance-normalized: unit scale


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime", reason="ONNX export needs pip install -e '.[export]'")
    out = tmp_path_factory.mktemp("export") / "tiny"
    assert main(["export", str(trained_run), "--out", str(out)]) == 0
    return out


def test_export_writes_both_models_tokens_and_runner_within_tolerance(exported):
    assert sorted(p.name for p in exported.iterdir()) == [
        "export.json", "model.onnx", "model.torchscript.pt", "tokens.json", "transcribe.py"]
    report = json.loads((exported / "export.json").read_text())
    assert report["tolerance"] == TOLERANCE
    for fmt in ("torchscript", "onnx"):
        assert 0 <= report["max_abs_diff"][fmt] <= TOLERANCE, fmt
    tokens = json.loads((exported / "tokens.json").read_text())
    assert tokens["tokens"][0] == "<blank>" and tokens["blank_id"] == 0 and tokens["word_boundary"] == "|"
    assert tokens["sample_rate"] == 16000 and tokens["frame_shift_seconds"] == pytest.approx(0.03)


@needs_mini
@pytest.mark.parametrize("backend", ["torchscript", "onnx"])
def test_exported_model_decodes_where_asr_cannot_be_imported(exported, trained_run, tmp_path, backend):
    expected = [t.text for t in Transcriber(trained_run, device="cpu").transcribe(FILES)]
    result = subprocess.run(
        [sys.executable, "-I", "-c", NO_ASR, str(exported / "transcribe.py"), str(exported),
         *map(str, FILES), "--backend", backend, "--batch-size", "3"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == [str(f) for f in FILES]
    assert [line.split(" ", 1)[1] if " " in line else "" for line in lines] == expected


def test_export_without_onnx_packages_is_one_line_naming_pip_install(trained_run, tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name in ("onnx", "onnxscript"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    assert main(["export", str(trained_run), "--out", str(tmp_path / "x")]) == 2
    assert "pip install -e '.[export]'" in capsys.readouterr().err
    assert main(["export", str(trained_run), "--out", str(tmp_path / "x"), "--formats", "torchscript"]) == 0
    assert (tmp_path / "x" / "model.torchscript.pt").is_file()
