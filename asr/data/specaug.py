"""SpecAugment frequency and time masking (Park et al. 2019), batched on the device.

Every utterance gets its own random masks, drawn as one tensor on the features' device: no
Python loop over utterances and no host synchronisation, so it costs a few kernels per batch
whatever the batch size. Time masks lie inside each utterance's valid frames and are at most
``time_ratio`` of its length wide (the paper's p), so short utterances are not wiped out.
Masked values are set to 0, the mean of utterance-normalized features.

Time warping (the paper's W) is left out: the paper reports it as the least useful of the
three, and it needs a per-utterance resampling that does not vectorize cheaply.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from asr.config import SpecAugmentConfig


@dataclass(frozen=True)
class MaskPolicy:
    """Mask counts and maximum widths (frequency in mel channels, time in frames)."""

    freq_masks: int  # m_F
    freq_width: int  # F
    time_masks: int  # m_T
    time_width: int  # T
    time_ratio: float  # p: a time mask covers at most this fraction of the utterance


POLICIES: dict[str, MaskPolicy] = {
    # Park et al. 2019, Table 1: LibriSpeech basic and double (time warping W=80 left out).
    "LB": MaskPolicy(freq_masks=1, freq_width=27, time_masks=1, time_width=100, time_ratio=1.0),
    "LD": MaskPolicy(freq_masks=2, freq_width=27, time_masks=2, time_width=100, time_ratio=1.0),
    "none": MaskPolicy(freq_masks=0, freq_width=0, time_masks=0, time_width=0, time_ratio=1.0),
}


def _draw_spans(uniform: Tensor, max_width: Tensor, extent: Tensor) -> tuple[Tensor, Tensor]:
    """Widths uniform in [0, max_width] and starts uniform in [0, extent - width].

    ``uniform`` is [B, masks, 2] in [0, 1); ``max_width`` and ``extent`` broadcast to [B, 1].
    """
    width = (uniform[..., 0] * (max_width + 1)).floor().minimum(max_width)
    start = (uniform[..., 1] * (extent - width + 1)).floor().minimum(extent - width)
    return start, width


def _span_mask(start: Tensor, width: Tensor, size: int) -> Tensor:
    """[B, masks] spans -> bool [B, size], True where any span covers the position."""
    positions = torch.arange(size, device=start.device, dtype=start.dtype)
    inside = (positions >= start[..., None]) & (positions < (start + width)[..., None])
    return inside.any(dim=1)


class SpecAugment(nn.Module):
    """Random frequency and time masks on ``[B, frames, channels]`` features.

    Applied whenever called (the trainer decides when augmentation is on); pass a
    ``torch.Generator`` on the features' device for reproducible masks.
    """

    def __init__(self, freq_masks: int = 2, freq_width: int = 27, time_masks: int = 2,
                 time_width: int = 100, time_ratio: float = 1.0) -> None:
        super().__init__()
        if min(freq_masks, freq_width, time_masks, time_width) < 0:
            raise ValueError(f"SpecAugment: mask counts and widths must be >= 0, got freq "
                             f"{freq_masks} x {freq_width}, time {time_masks} x {time_width}")
        if not 0 < time_ratio <= 1:
            raise ValueError(f"SpecAugment: time_ratio must lie in (0, 1], got {time_ratio}")
        self.policy = MaskPolicy(freq_masks, freq_width, time_masks, time_width, time_ratio)

    @classmethod
    def from_policy(cls, name: str) -> SpecAugment:
        if name not in POLICIES:
            raise ValueError(f"SpecAugment policy {name!r}: expected one of {', '.join(POLICIES)}")
        return cls(*astuple(POLICIES[name]))

    @classmethod
    def from_config(cls, cfg: SpecAugmentConfig) -> SpecAugment:
        """``LB``/``LD``/``none`` presets, or the ``custom`` counts and widths of ``cfg``."""
        if cfg.policy == "custom":
            return cls(cfg.freq_masks, cfg.freq_width, cfg.time_masks, cfg.time_width, cfg.time_ratio)
        return cls.from_policy(cfg.policy)

    def extra_repr(self) -> str:
        return repr(self.policy)

    def forward(self, feats: Tensor, frame_lengths: Tensor,
                generator: torch.Generator | None = None) -> Tensor:
        policy = self.policy
        if policy.freq_masks == 0 and policy.time_masks == 0:
            return feats
        batch, frames, channels = feats.shape
        uniform = torch.rand((batch, policy.freq_masks + policy.time_masks, 2),
                             generator=generator, device=feats.device)
        lengths = frame_lengths.to(device=feats.device, dtype=uniform.dtype)[:, None]  # [B, 1]

        freq_width = torch.full_like(lengths, float(min(policy.freq_width, channels)))
        start, width = _draw_spans(uniform[:, : policy.freq_masks], freq_width,
                                   torch.full_like(lengths, float(channels)))
        masked = _span_mask(start, width, channels)[:, None, :]  # [B, 1, channels]

        time_width = (policy.time_ratio * lengths).floor().clamp(max=float(policy.time_width))
        start, width = _draw_spans(uniform[:, policy.freq_masks :], time_width, lengths)
        masked = masked | _span_mask(start, width, frames)[:, :, None]  # [B, frames, channels]
        return feats.masked_fill(masked, 0.0)
