"""Transcribe audio with an exported model, without the ``asr`` package.

``asr export`` copies this file into its folder as ``transcribe.py``; it needs numpy,
soundfile and either torch (for ``model.torchscript.pt``) or onnxruntime (for ``model.onnx``)::

    python transcribe.py EXPORT_DIR a.flac b.wav [--backend onnx]

prints ``<file> <TRANSCRIPT>`` per file (greedy CTC decoding). Audio is averaged to mono; it
must be at the model's sample rate (``tokens.json``), since a good resampler is not in numpy.
This file imports nothing from ``asr``, so it keeps working where the package is absent.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf


def load_tokens(export_dir: str | Path) -> dict:
    """``tokens.json``: token strings, blank id, word boundary, sample rate, frame shift."""
    return json.loads((Path(export_dir) / "tokens.json").read_text(encoding="utf-8"))


def read_mono(path: str | Path, sample_rate: int) -> np.ndarray:
    """float32 mono samples of a file at ``sample_rate`` (channels averaged)."""
    samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    if rate != sample_rate:
        raise ValueError(f"{path}: {rate} Hz, the model takes {sample_rate} Hz (resample it first, "
                         f"e.g. sox in.wav -r {sample_rate} out.wav, or use `asr transcribe`)")
    return np.ascontiguousarray(samples.mean(axis=1), dtype=np.float32)


def greedy_text(log_probs: np.ndarray, length: int, tokens: list[str], blank_id: int,
                word_boundary: str | None) -> str:
    """Best path: argmax per frame, merge repeats, drop blanks, tokens to words."""
    best = log_probs[:length].argmax(axis=-1)
    keep = np.ones(len(best), dtype=bool)
    keep[1:] = best[1:] != best[:-1]
    pieces = [tokens[i] for i in best[keep & (best != blank_id)]]
    if word_boundary:
        text = "".join(pieces).replace(word_boundary, " ")
    else:  # sentencepiece marks a word start with U+2581
        text = "".join(pieces).replace("\u2581", " ")
    return " ".join(text.split())


class Model:
    """An exported model behind one call: (waves [B, T], lengths [B]) -> (log_probs, lengths)."""

    def __init__(self, export_dir: str | Path, backend: str = "torchscript") -> None:
        export_dir = Path(export_dir)
        self.backend = backend
        if backend == "torchscript":
            import torch

            self._module = torch.jit.load(str(export_dir / "model.torchscript.pt"), map_location="cpu")
        elif backend == "onnx":
            import onnxruntime as ort

            self._session = ort.InferenceSession(str(export_dir / "model.onnx"),
                                                 providers=["CPUExecutionProvider"])
        else:
            raise ValueError(f"backend {backend!r}: expected torchscript or onnx")

    def __call__(self, waves: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.backend == "onnx":
            log_probs, out_lengths = self._session.run(None, {"waves": waves, "lengths": lengths})
            return log_probs, out_lengths
        import torch

        with torch.no_grad():
            log_probs, out_lengths = self._module(torch.from_numpy(waves), torch.from_numpy(lengths))
        return log_probs.numpy(), out_lengths.numpy()


def transcribe(export_dir: str | Path, files: list[str], backend: str = "torchscript",
               batch_size: int = 8) -> list[str]:
    """Greedy transcripts of ``files`` with the exported model in ``export_dir``."""
    meta = load_tokens(export_dir)
    model = Model(export_dir, backend)
    min_samples = round(meta["sample_rate"] * 0.025)  # one 25 ms window at the least
    texts = []
    for start in range(0, len(files), batch_size):
        waves = [read_mono(f, meta["sample_rate"]) for f in files[start:start + batch_size]]
        lengths = np.array([max(len(w), min_samples) for w in waves], dtype=np.int64)
        batch = np.zeros((len(waves), int(lengths.max())), dtype=np.float32)
        for i, w in enumerate(waves):
            batch[i, : len(w)] = w
        log_probs, out_lengths = model(batch, lengths)
        texts += [greedy_text(log_probs[i], int(out_lengths[i]), meta["tokens"], meta["blank_id"],
                              meta["word_boundary"]) for i in range(len(waves))]
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("export_dir", help="folder written by `asr export`")
    parser.add_argument("audio", nargs="+", help="audio files at the model's sample rate")
    parser.add_argument("--backend", choices=["torchscript", "onnx"], default="torchscript",
                        help="which exported file runs")
    parser.add_argument("--batch-size", type=int, default=8, help="files decoded together")
    args = parser.parse_args(argv)
    for path, text in zip(args.audio, transcribe(args.export_dir, args.audio, args.backend, args.batch_size),
                          strict=True):
        print(f"{path} {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
