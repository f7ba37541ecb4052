"""The CTC acoustic model: front-end, transformer encoder, linear head, float32 log-softmax."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from asr.model.encoder import Encoder
from asr.model.frontend import Conv1dSubsampling, Conv2dSubsampling


class CTCModel(nn.Module):
    """log-mel frames -> per-frame log-probabilities over the tokenizer's classes (blank = 0).

    Knows nothing of DDP or precision policy: the trainer wraps it and sets autocast. The
    log-softmax is always computed in float32, so the CTC loss and the teacher's argmax are
    the same under bf16 autocast as in full precision.
    """

    def __init__(self, frontend: Conv1dSubsampling | Conv2dSubsampling, encoder: Encoder,
                 d_model: int, vocab_size: int, dropout: float) -> None:
        super().__init__()
        self.frontend = frontend
        self.dropout = nn.Dropout(dropout)
        self.encoder = encoder
        self.head = nn.Linear(d_model, vocab_size)
        self.vocab_size = vocab_size

    def output_lengths(self, feat_lengths: Tensor) -> Tensor:
        """Exact number of output frames for each input length (the CTC input lengths)."""
        return self.frontend.output_lengths(feat_lengths)

    def forward(self, feats: Tensor, feat_lengths: Tensor, padded: bool = True) -> tuple[Tensor, Tensor]:
        """feats: float [B, T, n_mels]; feat_lengths: int [B], each in [1, T].

        Returns ``(log_probs [B, T', V] float32, out_lengths [B])``; frames past an
        utterance's ``out_lengths`` are padding and carry no meaning. ``padded=False`` is the
        caller's promise, known on the host, that every ``feat_lengths`` is T: on CUDA the
        encoder then attends without a mask (see :class:`~asr.model.encoder.Encoder`).
        """
        if feats.dim() != 3 or feat_lengths.shape != feats.shape[:1]:
            raise ValueError(f"CTCModel: expected feats [B, T, n_mels] and feat_lengths [B], got "
                             f"{tuple(feats.shape)} and {tuple(feat_lengths.shape)}")
        x, lengths = self.frontend(feats, feat_lengths)
        x = self.encoder(self.dropout(x), lengths, padded=padded)
        return self.head(x).float().log_softmax(dim=-1), lengths

    def set_dropout(self, dropout: float, layerdrop: float) -> None:
        """Change residual/feed-forward/front-end dropout and LayerDrop (e.g. at the pseudo-label
        start); attention dropout is kept."""
        for module in self.modules():
            if isinstance(module, nn.Dropout):
                module.p = dropout
        self.encoder.layerdrop = layerdrop

    def set_layerdrop_seed(self, seed: int) -> None:
        """Seed LayerDrop's skip decisions; call with the optimizer step, identically on all ranks."""
        self.encoder.set_layerdrop_seed(seed)

    def compile_blocks(self, dynamic: bool = True, backend: str = "inductor", **options: Any) -> None:
        """``torch.compile`` the encoder blocks (one graph for all), LayerDrop staying eager;
        see :meth:`Encoder.compile_blocks`. Works for the teacher too (eval, no_grad)."""
        self.encoder.compile_blocks(dynamic=dynamic, backend=backend, **options)
