"""Positional information that works at any length, including lengths never seen in training.

Both schemes add a [B, T, d_model] term to the front-end output:

- ``conv``: a grouped convolution over time (wav2vec 2.0, Baevski et al. 2020), i.e. a
  *relative* position signal learned from the neighbourhood of each frame. It has no maximum
  length, and because padded frames are zeroed first, the edges of every utterance look the
  same whatever it is batched with. It is computed directly (``nn.Conv1d``) or by FFT: the same
  function, but in bf16 on a GPU the direct grouped convolution with a 128-frame kernel runs
  in cuDNN kernels without tensor cores, one launch per group, at several times the FFT's cost.
- ``sinusoidal``: the fixed sin/cos table of Vaswani et al. 2017, computed for the length at
  hand instead of stored up to a maximum.
"""

from __future__ import annotations

import math
from typing import get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asr.config import PosConvImpl
from asr.fft import fast_fft_length

POS_CONV_IMPLS: tuple[str, ...] = get_args(PosConvImpl)
"""How the convolution is computed: ``auto`` is ``fft`` on CUDA and ``direct`` elsewhere."""


class ConvPositionalEmbedding(nn.Module):
    """Weight-normalised grouped Conv1d + GELU, added to the input (wav2vec 2.0 style).

    wav2vec 2.0 uses kernel 128 and 16 groups at 20 ms frames (2.6 s of context); the
    receptive field here is ``kernel`` encoder frames. Weight norm over the kernel axis keeps
    the very wide kernel well conditioned early in training, as in wav2vec 2.0.

    ``impl`` picks how the convolution is computed (:data:`POS_CONV_IMPLS`). Both read the same
    parameters (``conv.bias``, ``conv.parametrizations.weight``), so a checkpoint loads either
    way. ``auto`` keeps the direct convolution on the CPU, where results then stay
    bit-identical to earlier versions, and uses the FFT on CUDA (relative error ~1e-6 in fp32).
    """

    def __init__(self, d_model: int, kernel: int = 128, groups: int = 16, impl: str = "auto") -> None:
        super().__init__()
        if d_model % groups:
            raise ValueError(f"model.pos_conv_groups: d_model={d_model} must divide by groups={groups}")
        if impl not in POS_CONV_IMPLS:
            raise ValueError(f"model.pos_conv_impl: got {impl!r}, allowed values are {', '.join(POS_CONV_IMPLS)}")
        self.kernel = kernel
        self.groups = groups
        self.impl = impl
        conv = nn.Conv1d(d_model, d_model, kernel, padding=kernel // 2, groups=groups)
        nn.init.normal_(conv.weight, mean=0.0, std=math.sqrt(4.0 / (kernel * d_model)))
        nn.init.zeros_(conv.bias)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)

    def forward(self, x: Tensor, pad_mask: Tensor) -> Tensor:
        """x: [B, T, d]; pad_mask: bool [B, T], True on real frames."""
        x_in = x.masked_fill(~pad_mask[..., None], 0.0).transpose(1, 2)
        use_fft = self.impl == "fft" or (self.impl == "auto" and x.is_cuda)
        if use_fft:
            y = self._conv_fft(x_in)
        else:
            y = self.conv(x_in)
            if self.kernel % 2 == 0:  # padding k // 2 on both sides gives one frame too many
                y = y[..., :-1]
        return x + F.gelu(y).transpose(1, 2)

    def _conv_fft(self, x: Tensor) -> Tensor:
        """The convolution of ``forward`` by FFT: x [B, C, T] -> [B, C, T] in the conv's dtype.

        Computed in fp32 whatever the autocast dtype (bf16 FFTs lose too much over 128 taps),
        then cast to what ``nn.Conv1d`` would have returned, so the rest of the model sees the
        same dtypes either way.
        """
        out_dtype = (torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type)
                     else x.dtype)
        with torch.autocast(x.device.type, enabled=False):
            y = grouped_conv1d_fft(x.float(), self.conv.weight.float(), self.conv.bias.float(), self.groups)
        return y.to(out_dtype)


def grouped_conv1d_fft(x: Tensor, weight: Tensor, bias: Tensor | None, groups: int) -> Tensor:
    """``F.conv1d(x, weight, bias, padding=k // 2, groups=groups)`` by FFT, trimmed to T frames.

    x: [B, C_in, T]; weight: [C_out, C_in / groups, k]. Output frame t is
    ``sum_j w[j] x[t + j - k // 2]`` (a cross-correlation, as torch's convolution), i.e. the
    direct convolution's output without the extra frame an even ``k`` adds. The sequence is
    zero-padded to a 2-3-5-smooth length >= T + k - 1, so the circular correlation equals the
    linear one on the T frames kept. Within a group every output channel sums over the group's
    input channels: per frequency that is a small complex matrix product, [B, C_in/G] x
    [C_in/G, C_out/G] for each of the G groups.
    """
    batch, channels, frames = x.shape
    out_channels, per_group, kernel = weight.shape
    if channels != per_group * groups or out_channels % groups:
        raise ValueError(f"grouped_conv1d_fft: x has {channels} channels, weight {tuple(weight.shape)}, "
                         f"groups {groups}")
    left = kernel // 2
    n_fft = fast_fft_length(frames + kernel - 1)
    # correlation = product with the conjugate spectrum; left-padding by k // 2 aligns frame 0
    x_f = torch.fft.rfft(F.pad(x, (left, 0)), n=n_fft)  # [B, C_in, F]
    w_f = torch.fft.rfft(weight, n=n_fft).conj()  # [C_out, C_in/G, F]
    x_f = x_f.view(batch, groups, per_group, -1)
    w_f = w_f.view(groups, out_channels // groups, per_group, -1)
    y_f = torch.einsum("bgif,goif->bgof", x_f, w_f).reshape(batch, out_channels, -1)
    y = torch.fft.irfft(y_f, n=n_fft)[..., :frames]
    return y if bias is None else y + bias[:, None]


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


def build_position(kind: str, d_model: int, kernel: int, groups: int, impl: str = "auto") -> nn.Module:
    """The positional embedding named by ``model.position``; ``impl`` applies to ``conv`` only."""
    if kind == "conv":
        return ConvPositionalEmbedding(d_model, kernel, groups, impl)
    if kind == "sinusoidal":
        return SinusoidalPositionalEmbedding(d_model)
    raise ValueError(f"model.position: got {kind!r}, allowed values are conv, sinusoidal")
