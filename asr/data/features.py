"""Log-mel features computed batched on the device that holds the waveforms.

Frames are cut without centring (Kaldi's ``snip_edges``): a frame exists only where its whole
window lies inside the utterance, so no frame ever sees zero padding or reflection, and an
utterance's features do not depend on what it is batched with. The FFT size equals the window
(400 samples at 16 kHz, as in Whisper), so a frame spans exactly ``win_ms``.

Features are always computed in float32, also inside a bf16 autocast region: the power
spectrum spans many orders of magnitude, and the log of a bf16 mel energy loses the detail
that per-utterance normalization then amplifies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torchaudio
from torch import Tensor, nn

if TYPE_CHECKING:
    from asr.config import FeatureConfig

LOG_FLOOR = 1e-10
"""Smallest mel power before the log (digital silence would otherwise give -inf)."""

NORM_EPS = 1e-5
"""Added to the variance before dividing, so constant channels stay finite."""


class LogMelFeatures(nn.Module):
    """Waveforms ``[B, T]`` + lengths in samples -> log-mel ``[B, frames, n_mels]`` + lengths.

    ``normalize="utterance"`` subtracts each utterance's per-channel mean and divides by its
    standard deviation, both over its valid frames only; padded frames are set to 0.
    """

    def __init__(self, sample_rate: int = 16000, n_mels: int = 80, win_ms: float = 25.0,
                 hop_ms: float = 10.0, normalize: str = "utterance") -> None:
        super().__init__()
        if normalize not in ("utterance", "none"):
            raise ValueError(f"normalize: got {normalize!r}, expected 'utterance' or 'none'")
        self.win_samples = round(sample_rate * win_ms / 1000)
        self.hop_samples = round(sample_rate * hop_ms / 1000)
        if not 0 < self.hop_samples <= self.win_samples:
            raise ValueError(f"hop_ms={hop_ms} and win_ms={win_ms} at {sample_rate} Hz give hop "
                             f"{self.hop_samples} and window {self.win_samples} samples; expected "
                             f"0 < hop <= window")
        self.normalize = normalize
        self.n_mels = n_mels
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=self.win_samples, win_length=self.win_samples,
            hop_length=self.hop_samples, n_mels=n_mels, center=False, power=2.0)

    @classmethod
    def from_config(cls, cfg: FeatureConfig) -> LogMelFeatures:
        """Build from a :class:`asr.config.FeatureConfig` (``cfg.features``)."""
        return cls(sample_rate=cfg.sample_rate, n_mels=cfg.n_mels, win_ms=cfg.win_ms,
                   hop_ms=cfg.hop_ms, normalize=cfg.normalize)

    def frame_lengths(self, lengths: Tensor) -> Tensor:
        """Whole frames inside ``lengths`` samples (0 for an utterance shorter than a window)."""
        return torch.div(lengths - self.win_samples, self.hop_samples, rounding_mode="floor").add(1).clamp(min=0)

    def forward(self, waves: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        if waves.ndim != 2 or lengths.shape != waves.shape[:1]:
            raise ValueError(f"expected waves [B, T] and lengths [B], got {tuple(waves.shape)} and "
                             f"{tuple(lengths.shape)}")
        with torch.autocast(device_type=waves.device.type, enabled=False):
            waves = waves.float()
            if waves.shape[1] < self.win_samples:  # shorter than one window: zero valid frames
                waves = nn.functional.pad(waves, (0, self.win_samples - waves.shape[1]))
            power = self.mel(waves)  # [B, n_mels, frames]
            feats = power.clamp(min=LOG_FLOOR).log().transpose(1, 2).contiguous()  # [B, frames, n_mels]
            frame_lengths = self.frame_lengths(lengths.to(waves.device))
            valid = torch.arange(feats.shape[1], device=feats.device) < frame_lengths[:, None]
            valid = valid.unsqueeze(-1)  # [B, frames, 1]
            if self.normalize == "utterance":
                count = frame_lengths.clamp(min=1).to(feats.dtype)[:, None, None]
                mean = feats.masked_fill(~valid, 0.0).sum(1, keepdim=True) / count
                centred = (feats - mean).masked_fill(~valid, 0.0)
                var = centred.square().sum(1, keepdim=True) / count
                feats = centred * torch.rsqrt(var + NORM_EPS)
            else:
                feats = feats.masked_fill(~valid, 0.0)
        return feats, frame_lengths
