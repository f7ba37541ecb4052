"""Transformer encoder: pre-LN or post-LN blocks, optional convolution module, LayerDrop.

Attention goes through ``F.scaled_dot_product_attention`` with a boolean key-padding mask
[B, 1, 1, T] (broadcast by the kernels, never a dense [B, H, T, T] tensor). Only *keys* are
masked: every query row, padded or not, attends to at least one
real frame (lengths are >= 1), so no row is all -inf and no NaN appears. On a GPU a mask
rules out the flash kernel (it takes none), which leaves the memory-efficient kernel, or
cuDNN's where allowed. ``model.attention_kernels=auto`` allows flash and memory-efficient only:
cuDNN's attention, PyTorch 2.11's first choice on Hopper, builds a plan for every new input
shape (about 130 ms a step for the paper model on an H200), and a duration-bucketing sampler's
batches rarely repeat a shape (docs/PERFORMANCE.md); ``torch`` leaves the choice to PyTorch.
Packing utterances into variable-length (cu_seqlens) flash calls would drop the mask, but
needs private PyTorch APIs. A caller that knows, on the host, that no frame of the batch is
padding passes ``padded=False`` and on CUDA the mask is dropped, which lets SDPA pick the
flash kernel; on the CPU the mask is kept, so CPU results stay bit-identical. Whether a batch
is padded is never read from a device tensor: that would be a host sync.

Padding invariance: everything that mixes frames (attention, the depthwise convolution, the
positional convolution) ignores padded frames, and the convolution module uses LayerNorm
rather than BatchNorm, so in eval mode an utterance's output does not depend on its batch.

LayerDrop (Fan et al. 2019) skips whole blocks in training. Under DDP every rank must skip
the same blocks, or the ranks would reduce different gradient sets. The decision therefore
comes from a private generator seeded with ``(seed, forward count since the seed was set)``:
the trainer calls ``set_layerdrop_seed(step)`` once per optimizer step, and every rank, doing
the same number of forwards, draws the same pattern. Skipped blocks get no gradient, so DDP
needs ``find_unused_parameters=True`` when layerdrop > 0. Under ``torch.compile`` the
Python-level skip causes one graph per pattern, and compiling the whole model changed the
draws; ``compile_blocks`` therefore compiles one block's forward (a single graph, shared by all
blocks) and leaves the skip decision in the eager loop, with the same draws as uncompiled.
"""

from __future__ import annotations

import contextlib
import functools
import random
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from asr.model.frontend import lengths_to_mask
from asr.model.position import build_position

_FLASH_EFFICIENT = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
ATTENTION_KERNELS: dict[str, list[SDPBackend] | None] = {
    "auto": _FLASH_EFFICIENT, "flash_efficient": _FLASH_EFFICIENT, "torch": None}
"""``model.attention_kernels`` -> the SDPA backends allowed (None: PyTorch's own choice, which
puts cuDNN first on Hopper). The math kernel stays as the fallback of the CPU and of inputs
that neither fused kernel takes."""


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused QKV projection."""

    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        """x: [B, T, d]; attn_mask: bool [B, 1, 1, T], True on keys that take part, or None
        when every key does."""
        batch, frames, d_model = x.shape
        q, k, v = self.qkv(x).view(batch, frames, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(batch, frames, d_model))


class FeedForward(nn.Module):
    def __init__(self, d_model: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, ffn_dim)
        self.dropout = nn.Dropout(dropout)
        self.down = nn.Linear(ffn_dim, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.dropout(F.gelu(self.up(x))))


class ConvModule(nn.Module):
    """Conformer convolution (Gulati et al. 2020): pointwise+GLU, depthwise, norm, SiLU, pointwise.

    LayerNorm replaces the original BatchNorm: batch statistics would mix padded frames and
    other utterances into each output and add buffers that DDP ranks must keep in sync.
    """

    def __init__(self, d_model: int, kernel: int) -> None:
        super().__init__()
        self.pointwise_in = nn.Linear(d_model, 2 * d_model)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel, padding=kernel // 2, groups=d_model)
        self.norm = nn.LayerNorm(d_model)
        self.pointwise_out = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, pad_mask: Tensor) -> Tensor:
        x = F.glu(self.pointwise_in(x), dim=-1).masked_fill(~pad_mask[..., None], 0.0)
        x = self.depthwise(x.transpose(1, 2)).transpose(1, 2)
        return self.pointwise_out(F.silu(self.norm(x)))


class EncoderBlock(nn.Module):
    """Self-attention, [convolution module], feed-forward; each a residual branch.

    Pre-LN (``norm_first``): ``x + drop(f(LN(x)))``, stable in deep stacks without careful
    warm-up. Post-LN: ``LN(x + drop(f(x)))``, the original transformer.
    """

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float,
                 attention_dropout: float, norm_first: bool, conv_kernel: int | None) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.attn = SelfAttention(d_model, num_heads, attention_dropout)
        self.attn_norm = nn.LayerNorm(d_model)
        self.conv = ConvModule(d_model, conv_kernel) if conv_kernel else None
        self.conv_norm = nn.LayerNorm(d_model) if conv_kernel else None
        self.ffn = FeedForward(d_model, ffn_dim, dropout)
        self.ffn_norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def _residual(self, x: Tensor, norm: nn.Module, branch, *args) -> Tensor:
        if self.norm_first:
            return x + self.dropout(branch(norm(x), *args))
        return norm(x + self.dropout(branch(x, *args)))

    def forward(self, x: Tensor, pad_mask: Tensor, attn_mask: Tensor | None) -> Tensor:
        x = self._residual(x, self.attn_norm, self.attn, attn_mask)
        if self.conv is not None:
            x = self._residual(x, self.conv_norm, self.conv, pad_mask)
        return self._residual(x, self.ffn_norm, self.ffn)


class Encoder(nn.Module):
    """Positional embedding, a stack of blocks, and the final LayerNorm of a pre-LN stack."""

    def __init__(self, d_model: int, num_layers: int, num_heads: int, ffn_dim: int,
                 dropout: float, attention_dropout: float, layerdrop: float, norm_first: bool,
                 position: str, pos_conv_kernel: int, pos_conv_groups: int,
                 conv_kernel: int | None, pos_conv_impl: str = "auto",
                 attention_kernels: str = "auto") -> None:
        super().__init__()
        if attention_kernels not in ATTENTION_KERNELS:
            raise ValueError(f"model.attention_kernels: got {attention_kernels!r}, allowed values are "
                             f"{', '.join(ATTENTION_KERNELS)}")
        self.attention_backends = ATTENTION_KERNELS[attention_kernels]
        self.position = build_position(position, d_model, pos_conv_kernel, pos_conv_groups, pos_conv_impl)
        # Post-LN blocks expect normalised input; pre-LN blocks normalise their own input and
        # leave the residual stream unnormalised, hence the LayerNorm at the other end.
        self.input_norm = nn.Identity() if norm_first else nn.LayerNorm(d_model)
        self.final_norm = nn.LayerNorm(d_model) if norm_first else nn.Identity()
        self.layers = nn.ModuleList(
            EncoderBlock(d_model, num_heads, ffn_dim, dropout, attention_dropout, norm_first, conv_kernel)
            for _ in range(num_layers))
        self.layerdrop = layerdrop
        self.set_layerdrop_seed(0)
        self._compiled_block: Any = None  # set by compile_blocks

    def compile_blocks(self, dynamic: bool = True, backend: str = "inductor", **options: Any) -> None:
        """Run every block through one ``torch.compile``d function (one graph for all blocks).

        The block is an argument of the compiled function, so with PyTorch's default inlining
        of ``nn.Module`` calls its parameters are graph inputs and every block of the same
        structure reuses the same graph. ``dynamic=True`` keeps one graph across batch shapes.
        Parameter names are unchanged (no ``_orig_mod.`` wrapper), so checkpoints are too.
        LayerDrop stays outside, in :meth:`forward`. If compiling fails (e.g. an inductor
        error), a warning gives the reason once and the blocks run eagerly from then on.
        ``options`` go to ``torch.compile`` (``mode``, ``fullgraph``, ...).
        """
        self._compiled_block = torch.compile(_run_block, dynamic=dynamic, backend=backend, **options)

    def _block(self, layer: nn.Module, x: Tensor, pad_mask: Tensor, attn_mask: Tensor | None) -> Tensor:
        if self._compiled_block is None:
            return layer(x, pad_mask, attn_mask)
        try:
            return self._compiled_block(layer, x, pad_mask, attn_mask)
        except _compile_errors() as err:
            reason = " ".join(str(err).split())[:500]
            warnings.warn(f"torch.compile of the encoder blocks failed, running them eagerly: "
                          f"{type(err).__name__}: {reason}", RuntimeWarning, stacklevel=2)
            self._compiled_block = None
            return layer(x, pad_mask, attn_mask)

    def set_layerdrop_seed(self, seed: int) -> None:
        """Seed the LayerDrop draws; the same seed on every rank gives the same skipped blocks."""
        self._layerdrop_seed = int(seed)
        self._layerdrop_forwards = 0

    def _blocks_to_run(self) -> list[bool]:
        if not (self.training and self.layerdrop > 0):
            return [True] * len(self.layers)
        # A str seed is hashed with SHA-512: the same on every process, whatever PYTHONHASHSEED.
        rng = random.Random(f"layerdrop:{self._layerdrop_seed}:{self._layerdrop_forwards}")
        self._layerdrop_forwards += 1
        return [rng.random() >= self.layerdrop for _ in self.layers]

    def forward(self, x: Tensor, lengths: Tensor, padded: bool = True) -> Tensor:
        """x: [B, T, d] front-end output; lengths: [B] real frames (>= 1). Returns [B, T, d].

        ``padded=False`` promises that every length is T: on CUDA attention then runs without
        a mask (the flash kernel). The default keeps the mask, which is always correct.
        """
        pad_mask = lengths_to_mask(lengths, x.size(1))
        attn_mask = None if not padded and x.is_cuda else pad_mask[:, None, None, :]
        x = self.input_norm(self.position(x, pad_mask))
        backends = self.attention_backends
        with sdpa_kernel(backends) if backends is not None else contextlib.nullcontext():
            for layer, run in zip(self.layers, self._blocks_to_run(), strict=True):
                if run:
                    x = self._block(layer, x, pad_mask, attn_mask)
        return self.final_norm(x)


def _run_block(layer: nn.Module, x: Tensor, pad_mask: Tensor, attn_mask: Tensor | None) -> Tensor:
    """One encoder block; a module-level function so that one compiled graph serves all blocks
    (and a deep copy of the model, such as the EMA teacher, does not call back into the original)."""
    return layer(x, pad_mask, attn_mask)


@functools.cache
def _compile_errors() -> tuple[type[Exception], ...]:
    """Errors raised when torch.compile itself fails (not the model): dynamo's and inductor's.
    Imported on first use: ``torch._dynamo`` is slow to import and eager runs never need it."""
    from torch._dynamo.exc import TorchDynamoException
    from torch._inductor.exc import InductorError

    return TorchDynamoException, InductorError
