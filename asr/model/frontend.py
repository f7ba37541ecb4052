"""Convolutional front-ends: log-mel frames [B, T, n_mels] -> encoder frames [B, T', d_model].

Each front-end knows its exact output length, because CTC needs the true number of output
frames of every utterance: ``output_lengths`` is the same integer arithmetic as the
convolutions (padding k // 2 keeps it ``ceil(T / stride)`` per layer, so an utterance of one
frame still gives one output frame). Frames past an utterance's length are zeroed before
every convolution, so an utterance's output does not depend on what it is batched with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_output_lengths(lengths: Tensor, kernel: int, stride: int, padding: int) -> Tensor:
    """Output frames of a 1-D convolution for each input length (floor, as torch does)."""
    return torch.div(lengths + 2 * padding - kernel, stride, rounding_mode="floor") + 1


def lengths_to_mask(lengths: Tensor, max_len: int) -> Tensor:
    """Bool [B, max_len], True on an utterance's real frames."""
    return torch.arange(max_len, device=lengths.device) < lengths[:, None]


class Conv1dSubsampling(nn.Module):
    """The slimIPL front-end: one 1-D convolution over time, kernel 7, stride 3, then GLU.

    The convolution has 2 x d_model channels and the GLU gates half of them with the other
    half, giving d_model channels at 3x fewer frames (30 ms at a 10 ms hop).
    """

    kernel, stride = 7, 3

    def __init__(self, n_mels: int, d_model: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(n_mels, 2 * d_model, self.kernel, self.stride, padding=self.kernel // 2)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return conv_output_lengths(lengths, self.kernel, self.stride, self.kernel // 2)

    def forward(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        feats = feats.masked_fill(~lengths_to_mask(lengths, feats.size(1))[..., None], 0.0)
        x = F.glu(self.conv(feats.transpose(1, 2)), dim=1)  # [B, d_model, T']
        return x.transpose(1, 2), self.output_lengths(lengths)


class Conv2dSubsampling(nn.Module):
    """Two 3x3 stride-2 Conv2d + ReLU over (time, mel), then a linear map to d_model: 4x.

    The usual ESPnet/icefall front-end, with padding 1 so the length is ``ceil(ceil(T/2)/2)``.
    The frames past each length are zeroed between the two convolutions too: after the first
    ReLU they hold ``relu(bias)``, which the second one would otherwise read.
    """

    kernel, stride = 3, 2

    def __init__(self, n_mels: int, d_model: int, channels: int | None = None) -> None:
        super().__init__()
        channels = channels or d_model
        self.conv1 = nn.Conv2d(1, channels, self.kernel, self.stride, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, self.kernel, self.stride, padding=1)
        mels_out = n_mels
        for _ in range(2):
            mels_out = (mels_out + 2 - self.kernel) // self.stride + 1
        self.proj = nn.Linear(channels * mels_out, d_model)

    def _one(self, lengths: Tensor) -> Tensor:
        return conv_output_lengths(lengths, self.kernel, self.stride, 1)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return self._one(self._one(lengths))

    def forward(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x = feats.masked_fill(~lengths_to_mask(lengths, feats.size(1))[..., None], 0.0)
        x = F.relu(self.conv1(x[:, None]))  # [B, C, T/2, F/2]
        lengths = self._one(lengths)
        x = x.masked_fill(~lengths_to_mask(lengths, x.size(2))[:, None, :, None], 0.0)
        x = F.relu(self.conv2(x))  # [B, C, T/4, F/4]
        x = self.proj(x.permute(0, 2, 1, 3).flatten(2))
        return x, self._one(lengths)


def build_frontend(kind: str, n_mels: int, d_model: int) -> Conv1dSubsampling | Conv2dSubsampling:
    if kind == "conv1d":
        return Conv1dSubsampling(n_mels, d_model)
    if kind == "conv2d":
        return Conv2dSubsampling(n_mels, d_model)
    raise ValueError(f"model.frontend: got {kind!r}, allowed values are conv1d, conv2d")
