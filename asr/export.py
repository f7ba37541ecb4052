"""``asr export``: a checkpoint as TorchScript and ONNX files, waveform in, log-probs out.

The exported graph includes the log-mel front-end, so a user needs no feature code: inputs
are ``waves`` float32 [B, samples] at the model's sample rate and ``lengths`` int64 [B]
(samples), outputs ``log_probs`` float32 [B, frames, vocab] and ``out_lengths`` int64 [B].
Each utterance must be at least one analysis window long (25 ms by default).

How (torch 2.11): ``torch.jit.script`` of the model fails, but the model has no data-dependent
Python control flow in eval mode, so ``torch.jit.trace`` records it exactly, with batch size
and length left free; ONNX goes through ``torch.export`` (``torch.onnx.export(dynamo=True)``)
with both dimensions dynamic. The STFT is a strided convolution with a windowed DFT basis
(:class:`ConvMelSpectrogram`) rather than ``torch.stft``: ONNX Runtime's DFT differed from the
eager model by up to 2e-4 in log-probability, the convolution by 2e-6 (a tiny model, random
waves). Both files are checked against the eager model, with dynamic batch and length, before
``export.json`` records the differences.

The folder also holds ``tokens.json`` (the tokenizer and what decoding needs) and
``transcribe.py``, a copy of :mod:`asr.standalone`, which decodes audio with the exported
files using numpy, soundfile and torch or onnxruntime only.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from asr.data.features import LogMelFeatures
from asr.progress import Progress
from asr.text.tokenizer import Tokenizer

TORCHSCRIPT_FILE = "model.torchscript.pt"
ONNX_FILE = "model.onnx"
TOKENS_FILE = "tokens.json"
REPORT_FILE = "export.json"
RUNNER_FILE = "transcribe.py"
FORMATS = ("torchscript", "onnx")
TOLERANCE = 1e-3
"""Largest allowed |log-prob difference| between an exported file and the eager model, over
the valid frames of the check batches. Measured: about 2e-6 on CPU (float32)."""


class ConvMelSpectrogram(nn.Module):
    """Mel power spectrogram as one strided Conv1d with a windowed DFT basis and a matmul.

    Same numbers as the ``torchaudio.transforms.MelSpectrogram`` it is built from (no centring,
    power 2), within float32 rounding, and built only of ops that every exporter handles.
    """

    def __init__(self, mel: nn.Module) -> None:
        super().__init__()
        spec = mel.spectrogram
        if spec.center or spec.power != 2.0:
            raise ValueError("ConvMelSpectrogram: expected center=False and power=2 (as LogMelFeatures)")
        n_fft, win_length = spec.n_fft, spec.win_length
        window = torch.zeros(n_fft, dtype=torch.float64)
        offset = (n_fft - win_length) // 2  # torch.stft centres a shorter window in the frame
        window[offset:offset + win_length] = spec.window.double()
        n = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
        angles = 2 * math.pi * k[:, None] * n[None, :] / n_fft
        basis = torch.cat([torch.cos(angles) * window, -torch.sin(angles) * window])  # [2F, n_fft]
        self.register_buffer("basis", basis.float()[:, None, :])
        self.register_buffer("filterbank", mel.mel_scale.fb.detach().clone().float())  # [F, n_mels]
        self.hop_length = spec.hop_length
        self.n_freqs = n_fft // 2 + 1

    def forward(self, waves: Tensor) -> Tensor:
        """waves [B, T] -> mel power [B, n_mels, frames]."""
        spectrum = nn.functional.conv1d(waves[:, None, :], self.basis, stride=self.hop_length)
        power = spectrum[:, : self.n_freqs].square() + spectrum[:, self.n_freqs:].square()
        return torch.matmul(power.transpose(1, 2), self.filterbank).transpose(1, 2)


def exportable_features(features: LogMelFeatures) -> LogMelFeatures:
    """A copy of ``features`` whose spectrogram is :class:`ConvMelSpectrogram` (same outputs)."""
    out = copy.deepcopy(features)
    out.mel = ConvMelSpectrogram(features.mel)
    return out


class WaveformCTC(nn.Module):
    """Features + CTC model in one module: (waves, lengths) -> (log_probs, out_lengths)."""

    def __init__(self, features: LogMelFeatures, model: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.model = model

    def forward(self, waves: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        feats, feat_lengths = self.features(waves, lengths)
        return self.model(feats, feat_lengths)


@dataclass
class ExportReport:
    """What was written and how close each file came to the eager model."""

    out_dir: str
    files: dict[str, str] = field(default_factory=dict)
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    tolerance: float = TOLERANCE
    seconds: dict[str, float] = field(default_factory=dict)


def tokens_payload(tokenizer: Tokenizer, *, sample_rate: int, frame_shift: float, checkpoint: str,
                   weights: str, step: int) -> dict:
    """``tokens.json``: the tokenizer and what a decoder without this package needs."""
    return {"tokens": list(tokenizer.tokens), "blank_id": tokenizer.blank_id,
            "word_boundary": tokenizer.word_boundary, "sample_rate": sample_rate,
            "frame_shift_seconds": frame_shift, "tokenizer": tokenizer.to_dict(),
            "identity": tokenizer.identity(), "checkpoint": checkpoint, "weights": weights, "step": step}


def check_inputs(sample_rate: int, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    """Batches of other sizes and lengths than the trace example: 1 x 2.1 s, 3 x (3.7, 0.5, 1.9 s)."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for seconds in ([2.1], [3.7, 0.5, 1.9]):
        lengths = torch.tensor([round(s * sample_rate) for s in seconds], dtype=torch.long)
        waves = 0.1 * torch.randn(len(seconds), int(lengths.max()), generator=gen)
        waves = waves.masked_fill(torch.arange(waves.shape[1]) >= lengths[:, None], 0.0)
        batches.append((waves, lengths))
    return batches


def max_valid_diff(expected: tuple[Tensor, Tensor], found: tuple[np.ndarray, np.ndarray]) -> float:
    """Largest |difference| of log-probs over each utterance's valid frames (lengths must agree)."""
    log_probs, lengths = expected
    found_lp, found_len = (np.asarray(x) for x in found)
    if not np.array_equal(found_len, lengths.numpy()):
        return math.inf
    worst = 0.0
    for b, n in enumerate(lengths.tolist()):
        worst = max(worst, float(np.abs(found_lp[b, :n] - log_probs[b, :n].numpy()).max(initial=0.0)))
    return worst


def export_checkpoint(checkpoint: Path, out_dir: Path, *, weights: str = "student", average_last: int = 1,
                      formats: tuple[str, ...] = FORMATS, opset: int = 18,
                      tolerance: float = TOLERANCE) -> ExportReport:
    """Write the export folder; raise if a file's outputs differ from eager by more than ``tolerance``."""
    from asr.evaluate import load_model_for_eval

    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"--formats {' '.join(unknown)}: allowed values are {', '.join(FORMATS)}")
    if "onnx" in formats:
        _require_onnx()
    model, tokenizer, info = load_model_for_eval(checkpoint, weights, average_last)
    cfg = info["config"]
    reference = WaveformCTC(LogMelFeatures.from_config(cfg.features), model).eval()
    module = WaveformCTC(exportable_features(reference.features), model).eval()
    rate = cfg.features.sample_rate
    subsampling = round(3000 / int(model.output_lengths(torch.tensor([3000]))[0]))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = ExportReport(str(out_dir))

    example = (0.1 * torch.randn(2, rate, generator=torch.Generator().manual_seed(1)),
               torch.tensor([rate, rate * 3 // 4], dtype=torch.long))
    checks = check_inputs(rate)
    with torch.no_grad():
        expected = [reference(*batch) for batch in checks]
    progress = Progress("export", len(formats), unit="files")
    for fmt in formats:
        t0 = time.perf_counter()
        if fmt == "torchscript":
            path = out_dir / TORCHSCRIPT_FILE
            with warnings.catch_warnings(), torch.no_grad():
                # TorchScript is deprecated in favour of torch.export, but it is still what runs
                # with torch alone (no Python model code), which is the point of this file
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                traced = torch.jit.trace(module, example, check_trace=False)
                _save_atomic(lambda tmp, traced=traced: torch.jit.save(traced, str(tmp)), path)
                loaded = torch.jit.load(str(path))
            with torch.no_grad():
                found = [tuple(t.numpy() for t in loaded(*batch)) for batch in checks]
        else:
            path = out_dir / ONNX_FILE
            _export_onnx(module, example, path, opset)
            found = _run_onnx(path, checks)
        diff = max(max_valid_diff(e, f) for e, f in zip(expected, found, strict=True))
        report.files[fmt], report.max_abs_diff[fmt] = path.name, diff
        report.seconds[fmt] = time.perf_counter() - t0
        if not diff <= tolerance:
            raise RuntimeError(f"export {fmt}: {path} differs from the eager model by {diff:.3g} in "
                               f"log-probability (tolerance {tolerance:g})")
        progress.update()
    progress.close()

    payload = tokens_payload(tokenizer, sample_rate=rate, frame_shift=cfg.features.hop_ms / 1000 * subsampling,
                             checkpoint=str(info["path"]), weights=weights, step=info["step"])
    _write_text(out_dir / TOKENS_FILE, json.dumps(payload, indent=1) + "\n")
    from asr import standalone

    shutil.copyfile(standalone.__file__, out_dir / RUNNER_FILE)
    report.files["tokens"], report.files["runner"] = TOKENS_FILE, RUNNER_FILE
    summary = {**report.__dict__, "inputs": {"waves": "float32 [batch, samples]", "lengths": "int64 [batch]"},
               "outputs": {"log_probs": "float32 [batch, frames, vocab]", "out_lengths": "int64 [batch]"},
               "sample_rate": rate, "min_samples": reference.features.win_samples, "torch": torch.__version__}
    _write_text(out_dir / REPORT_FILE, json.dumps(summary, indent=1) + "\n")
    for fmt in formats:
        print(f"export: {out_dir / report.files[fmt]} (max |diff| {report.max_abs_diff[fmt]:.2g} vs eager, "
              f"{report.seconds[fmt]:.1f} s)")
    return report


def _require_onnx() -> None:
    missing = []
    for module in ("onnx", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ImportError(f"ONNX export needs {' and '.join(missing)}: pip install -e '.[export]' "
                          "(or use --formats torchscript)")


def _export_onnx(module: nn.Module, example: tuple[Tensor, Tensor], path: Path, opset: int) -> None:
    batch, samples = torch.export.Dim("batch"), torch.export.Dim("samples", min=module.features.win_samples)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, example, str(tmp), dynamo=True, opset_version=opset, verbose=False,
                              input_names=["waves", "lengths"], output_names=["log_probs", "out_lengths"],
                              dynamic_shapes={"waves": {0: batch, 1: samples}, "lengths": {0: batch}},
                              external_data=False)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _run_onnx(path: Path, batches: list[tuple[Tensor, Tensor]]) -> list[tuple[np.ndarray, np.ndarray]]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError("checking the ONNX file needs onnxruntime: pip install -e '.[export]'") from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [tuple(session.run(None, {"waves": w.numpy(), "lengths": n.numpy()})) for w, n in batches]


def _save_atomic(save, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_text(path: Path, text: str) -> None:
    _save_atomic(lambda tmp: tmp.write_text(text, encoding="utf-8"), path)
