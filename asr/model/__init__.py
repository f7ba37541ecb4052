"""The CTC transformer: ``build_model(cfg.model, n_mels, vocab_size)``.

Parameter counts (``tests/test_model.py`` checks them; letters, 80 mels):

============================== ======================================= ===========
config                         shape                                   parameters
============================== ======================================= ===========
configs/synth_tiny.yaml        6 x 144, conv2d, conv module            2.67M
configs/base.yaml              14 x 768, 4 heads, FFN 3072, conv1d     104.8M
configs/librispeech_paper.yaml 36 x 768, 4 heads, FFN 3072, conv1d     260.8M
============================== ======================================= ===========

The paper model is the slimIPL transformer (~255M in the paper); 4.7M of the difference is
the convolutional positional embedding (768 x 48 x 128 weights), which stands in for the
paper's relative positional embedding.
"""

from __future__ import annotations

from typing import Any

from asr.model.ctc import CTCModel
from asr.model.encoder import Encoder
from asr.model.frontend import build_frontend

__all__ = ["CTCModel", "build_model"]


def build_model(cfg: Any, n_mels: int, vocab_size: int) -> CTCModel:
    """Build the model from the ``model`` section of a config (``asr.config.ModelConfig``).

    Construct under ``torch.device("meta")`` to count parameters without allocating them.
    ``model.pos_conv_impl``: ``auto`` (the default) is the FFT on CUDA and the direct
    convolution elsewhere.
    """
    encoder = Encoder(
        d_model=cfg.d_model, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
        ffn_dim=cfg.ffn_dim, dropout=cfg.dropout, attention_dropout=cfg.attention_dropout,
        layerdrop=cfg.layerdrop, norm_first=cfg.norm_first, position=cfg.position,
        pos_conv_kernel=cfg.pos_conv_kernel, pos_conv_groups=cfg.pos_conv_groups,
        conv_kernel=cfg.conv_kernel if cfg.conv_module else None,
        pos_conv_impl=cfg.pos_conv_impl, attention_kernels=cfg.attention_kernels,
    )
    frontend = build_frontend(cfg.frontend, n_mels, cfg.d_model)
    return CTCModel(frontend, encoder, cfg.d_model, vocab_size, cfg.dropout)
