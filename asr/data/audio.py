"""FLAC bytes in and out: decoding shard members, encoding and resampling for preparation.

Shards store each utterance as the FLAC file itself, so decoding a member is decoding a small
in-memory FLAC file. Every failure to decode becomes an :class:`AudioDecodeError` naming the
utterance and where its bytes came from, so the loader can skip, count and log it instead of
stopping a training run on one bad file.
"""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf


class AudioDecodeError(ValueError):
    """Audio bytes that cannot be turned into samples (corrupt, wrong format or sample rate)."""

    def __init__(self, key: str, source: str, reason: str) -> None:
        super().__init__(f"cannot decode {key!r} from {source}: {reason}")
        self.key = key
        self.source = source
        self.reason = reason

    def __reduce__(self):  # keep the three fields when sent from a DataLoader worker
        return type(self), (self.key, self.source, self.reason)


def decode_audio(
    data: bytes, *, expected_sample_rate: int = 16000, key: str = "<bytes>", source: str = "<memory>"
) -> np.ndarray:
    """Decode one FLAC (or any libsndfile format) file held in memory to float32 mono [T].

    ``key`` and ``source`` only label the :class:`AudioDecodeError` raised when the bytes are
    corrupt, not mono, or not at ``expected_sample_rate`` Hz (a silent rate change would
    shift every feature frame, so it is an error, never a resample).
    """
    try:
        samples, sample_rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioDecodeError(key, source, str(err)) from None
    if sample_rate != expected_sample_rate:
        raise AudioDecodeError(key, source, f"sample rate {sample_rate} Hz, expected {expected_sample_rate} Hz")
    if samples.shape[1] != 1:
        raise AudioDecodeError(key, source, f"{samples.shape[1]} channels, expected mono")
    if samples.shape[0] == 0:
        raise AudioDecodeError(key, source, "no samples")
    return np.ascontiguousarray(samples[:, 0])


def read_audio_file(path: str, *, key: str = "<file>") -> tuple[np.ndarray, int]:
    """Decode a whole audio file to float32 mono [T] and its sample rate (for re-encoding)."""
    try:
        samples, sample_rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        raise AudioDecodeError(key, path, str(err)) from None
    if samples.shape[1] != 1:
        raise AudioDecodeError(key, path, f"{samples.shape[1]} channels, expected mono")
    return np.ascontiguousarray(samples[:, 0]), sample_rate


def encode_flac(samples: np.ndarray, sample_rate: int) -> bytes:
    """FLAC file bytes of float32 mono samples in [-1, 1], as 16-bit PCM like LibriSpeech."""
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(samples, -1.0, 1.0), sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Band-limited resampling (torchaudio's windowed sinc) of float32 mono samples."""
    import torch
    import torchaudio.functional as F

    if from_rate == to_rate:
        return samples
    waveform = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    return F.resample(waveform, from_rate, to_rate).numpy()
