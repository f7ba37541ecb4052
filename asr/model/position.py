"""Positional information that works at any length, including lengths never seen in training.

Both schemes add a [B, T, d_model] term to the front-end output:

- ``conv``: a grouped convolution over time (wav2vec 2.0, Baevski et al. 2020), i.e. a
  *relative* position signal learned from the neighbourhood of each frame. It has no maximum
  length, and because padded frames are zeroed first, the edges of every utterance look the
  same whatever it is batched with.
- ``sinusoidal``: the fixed sin/cos table of Vaswani et al. 2017, computed for the length at
  hand instead of stored up to a maximum.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvPositionalEmbedding(nn.Module):
    """Weight-normalised grouped Conv1d + GELU, added to the input (wav2vec 2.0 style).

    wav2vec 2.0 uses kernel 128 and 16 groups at 20 ms frames (2.6 s of context); the
    receptive field here is ``kernel`` encoder frames. Weight norm over the kernel axis keeps
    the very wide kernel well conditioned early in training, as in wav2vec 2.0.
    """

    def __init__(self, d_model: int, kernel: int = 128, groups: int = 16) -> None:
        super().__init__()
        if d_model % groups:
            raise ValueError(f"model.pos_conv_groups: d_model={d_model} must divide by groups={groups}")
        self.kernel = kernel
        conv = nn.Conv1d(d_model, d_model, kernel, padding=kernel // 2, groups=groups)
        nn.init.normal_(conv.weight, mean=0.0, std=math.sqrt(4.0 / (kernel * d_model)))
        nn.init.zeros_(conv.bias)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)

    def forward(self, x: Tensor, pad_mask: Tensor) -> Tensor:
        """x: [B, T, d]; pad_mask: bool [B, T], True on real frames."""
        y = self.conv(x.masked_fill(~pad_mask[..., None], 0.0).transpose(1, 2))
        if self.kernel % 2 == 0:  # padding k // 2 on both sides gives one frame too many
            y = y[..., :-1]
        return x + F.gelu(y).transpose(1, 2)


class SinusoidalPositionalEmbedding(nn.Module):
    """x + PE[t], with PE computed on the fly for the current length (no table to outgrow)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.d_model = d_model

    def forward(self, x: Tensor, pad_mask: Tensor) -> Tensor:
        del pad_mask  # an absolute position is the same with or without padding after it
        positions = torch.arange(x.size(1), device=x.device, dtype=torch.float32)[:, None]
        inv_freq = torch.exp(torch.arange(0, self.d_model, 2, device=x.device, dtype=torch.float32)
                             * (-math.log(10000.0) / self.d_model))
        angles = positions * inv_freq  # [T, ceil(d/2)]
        pe = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)[:, : self.d_model]
        return x + pe.to(x.dtype)


def build_position(kind: str, d_model: int, kernel: int, groups: int) -> nn.Module:
    if kind == "conv":
        return ConvPositionalEmbedding(d_model, kernel, groups)
    if kind == "sinusoidal":
        return SinusoidalPositionalEmbedding(d_model)
    raise ValueError(f"model.position: got {kind!r}, allowed values are conv, sinusoidal")
