"""The CTC transformer: exact lengths, padding invariance, both norms and positions, LayerDrop."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from asr.config import ModelConfig, load_config
from asr.model import build_model
from asr.model.frontend import Conv1dSubsampling, Conv2dSubsampling

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
N_MELS, VOCAB = 16, 29

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only contend


def small(**overrides) -> ModelConfig:
    base = ModelConfig(d_model=32, num_layers=2, num_heads=4, ffn_dim=64, dropout=0.1,
                       attention_dropout=0.1, pos_conv_kernel=8, pos_conv_groups=4, conv_kernel=5)
    return dataclasses.replace(base, **overrides)


def make(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_model(small(**overrides), N_MELS, VOCAB)


def ragged_batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch whose padding holds garbage, so only real masking makes outputs agree."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(len(lengths), max(lengths), N_MELS, generator=g)
    return feats, torch.tensor(lengths)


# --- lengths ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("frontend", "frames", "expected"), [
    (Conv1dSubsampling, 1, 1), (Conv1dSubsampling, 3, 1), (Conv1dSubsampling, 4, 2),
    (Conv1dSubsampling, 100, 34), (Conv1dSubsampling, 3000, 1000),
    (Conv2dSubsampling, 1, 1), (Conv2dSubsampling, 4, 1), (Conv2dSubsampling, 5, 2),
    (Conv2dSubsampling, 100, 25), (Conv2dSubsampling, 3001, 751),
])
def test_frontend_output_length_table(frontend, frames, expected):
    assert frontend(N_MELS, 8).output_lengths(torch.tensor([frames])).item() == expected


@pytest.mark.parametrize("frontend", ["conv1d", "conv2d"])
def test_output_lengths_match_the_real_output_for_every_input_length(frontend):
    """ceil(T/3) or ceil(ceil(T/2)/2), as the convolutions really produce them."""
    model = make(frontend=frontend).eval()
    lengths = torch.arange(1, 3001)
    ceil_div = lambda a, b: -(-a // b)  # noqa: E731
    expected = ceil_div(lengths, 3) if frontend == "conv1d" else ceil_div(ceil_div(lengths, 2), 2)
    assert torch.equal(model.output_lengths(lengths), expected)
    with torch.no_grad():
        for frames in [*range(1, 25), 99, 100, 101, 102, 299, 300, 301]:
            x, out = model.frontend(torch.randn(1, frames, N_MELS), torch.tensor([frames]))
            assert x.shape[1] == out.item() == expected[frames - 1]


def test_forward_returns_float32_log_probs_and_output_lengths():
    model = make().eval()
    feats, lengths = ragged_batch([50, 17, 3])
    with torch.no_grad():
        log_probs, out_lengths = model(feats, lengths)
    assert log_probs.shape == (3, 17, VOCAB) and log_probs.dtype == torch.float32
    assert out_lengths.tolist() == [17, 6, 1]
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(3, 17), atol=1e-5)


def test_attention_kernels_change_the_kernel_not_the_function():
    feats, lengths = ragged_batch([50, 17, 3])
    outputs = {}
    for kernels in ("auto", "torch", "flash_efficient"):
        model = make(attention_kernels=kernels).eval()
        with torch.no_grad():
            outputs[kernels] = model(feats, lengths)[0]
    torch.testing.assert_close(outputs["auto"], outputs["torch"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outputs["flash_efficient"], outputs["torch"], atol=1e-5, rtol=1e-5)


def test_unknown_attention_kernels_are_refused_by_name():
    with pytest.raises(ValueError, match=r"model\.attention_kernels: got 'cudnn'"):
        make(attention_kernels="cudnn")


# --- padding invariance -----------------------------------------------------------------------

VARIANTS = [
    dict(frontend=f, norm_first=n, position=p, conv_module=c)
    for f, n, p, c in itertools.product(["conv1d", "conv2d"], [True, False], ["conv", "sinusoidal"], [False, True])
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(str(x) for x in v.values()))
def test_outputs_do_not_depend_on_the_batch(variant):
    model = make(**variant).eval()
    feats, lengths = ragged_batch([61, 40, 7, 1])
    with torch.no_grad():
        batched, out_lengths = model(feats, lengths)
        for i, n in enumerate(lengths.tolist()):
            alone, _ = model(feats[i:i + 1, :n], lengths[i:i + 1])
            valid = out_lengths[i]
            assert alone.shape[1] == valid
            torch.testing.assert_close(batched[i, :valid], alone[0], atol=2e-5, rtol=1e-5)


# --- norms, positions, long inputs --------------------------------------------------------------


@pytest.mark.parametrize(("norm_first", "normalized"), [(False, True), (True, False)])
def test_post_ln_blocks_normalize_their_output_pre_ln_blocks_keep_the_residual(norm_first, normalized):
    model = make(norm_first=norm_first).eval()
    block = model.encoder.layers[0]
    x = 3.0 + 5.0 * torch.randn(2, 20, 32)
    mask = torch.ones(2, 20, dtype=torch.bool)
    with torch.no_grad():
        y = block(x, mask, mask[:, None, None, :])
    per_frame_std = y.std(dim=-1, unbiased=False)
    assert torch.allclose(per_frame_std, torch.ones_like(per_frame_std), atol=1e-2) == normalized
    assert (type(model.encoder.final_norm).__name__ == "LayerNorm") == norm_first


@pytest.mark.parametrize("position", ["conv", "sinusoidal"])
def test_inputs_far_longer_than_any_in_training_give_finite_outputs(position):
    model = make(position=position, frontend="conv1d").eval()
    feats, lengths = ragged_batch([6000, 150])  # 60 s at a 10 ms hop: 2000 encoder frames
    with torch.no_grad():
        log_probs, out_lengths = model(feats, lengths)
    assert out_lengths.tolist() == [2000, 50]
    assert torch.isfinite(log_probs).all()


def test_sinusoidal_positions_differ_along_time_and_extend_without_a_table():
    model = make(position="sinusoidal")
    zeros = torch.zeros(1, 5000, 32)
    pe = model.encoder.position(zeros, torch.ones(1, 5000, dtype=torch.bool))[0]
    assert torch.allclose(pe[:10], model.encoder.position(zeros[:, :10], torch.ones(1, 10, dtype=torch.bool))[0])
    assert (pe[1:] - pe[:-1]).abs().sum(-1).min() > 0.1


def test_bf16_autocast_on_cpu_gives_finite_float32_log_probs():
    model = make(conv_module=True).eval()
    feats, lengths = ragged_batch([80, 33])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        log_probs, _ = model(feats, lengths)
    assert log_probs.dtype == torch.float32 and torch.isfinite(log_probs).all()
    assert torch.allclose(log_probs.logsumexp(-1), torch.zeros(2, 27), atol=1e-4)


def test_ctc_loss_falls_when_fitting_one_batch():
    model = make(dropout=0.0, attention_dropout=0.0).train()
    feats, lengths = ragged_batch([60, 45])
    targets, target_lengths = torch.tensor([[3, 4, 1, 5, 6], [7, 8, 9, 0, 0]]), torch.tensor([5, 3])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        log_probs, out_lengths = model(feats, lengths)
        loss = F.ctc_loss(log_probs.transpose(0, 1), targets, out_lengths, target_lengths)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# --- dropout and LayerDrop ------------------------------------------------------------------------


def test_layerdrop_skips_the_same_blocks_on_every_rank_for_a_seed():
    """Two "ranks" with different global RNG states draw the same pattern from the same seed."""
    ranks = [make(num_layers=8, layerdrop=0.5).train() for _ in range(2)]
    patterns = []
    for rank, model in enumerate(ranks):
        torch.manual_seed(100 + rank)
        model.set_layerdrop_seed(7)
        patterns.append([model.encoder._blocks_to_run() for _ in range(4)])
    assert patterns[0] == patterns[1]
    assert len({tuple(p) for p in patterns[0]}) > 1  # successive forwards draw anew
    assert any(not all(p) for p in patterns[0]) and any(any(p) for p in patterns[0])
    ranks[0].set_layerdrop_seed(8)
    assert [ranks[0].encoder._blocks_to_run() for _ in range(4)] != patterns[0]


def test_layerdrop_forward_is_reproducible_and_off_in_eval():
    model = make(num_layers=6, layerdrop=0.5, dropout=0.0, attention_dropout=0.0)
    feats, lengths = ragged_batch([40, 30])
    model.train()
    model.set_layerdrop_seed(3)
    first = model(feats, lengths)[0]
    model.set_layerdrop_seed(3)
    assert torch.equal(model(feats, lengths)[0], first)
    model.eval()
    assert model.encoder._blocks_to_run() == [True] * 6


def test_set_dropout_changes_dropout_and_layerdrop_but_not_attention_dropout():
    model = make()
    model.set_dropout(0.3, 0.2)
    rates = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == {0.3}
    assert model.encoder.layerdrop == 0.2
    assert all(layer.attn.dropout == 0.1 for layer in model.encoder.layers)


# --- sizes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("config", "low", "high"), [
    ("synth_tiny.yaml", 1.5e6, 3.0e6),
    ("base.yaml", 95e6, 110e6),
    ("librispeech_paper.yaml", 250e6, 262e6),  # ~255M in the paper
])
def test_parameter_counts_of_the_configs(config, low, high):
    cfg = load_config(CONFIGS / config)
    with torch.device("meta"):
        model = build_model(cfg.model, cfg.features.n_mels, 29)
    count = sum(p.numel() for p in model.parameters())
    print(f"{config}: {count:,} parameters")
    assert low <= count <= high


def test_paper_config_is_the_slimipl_shape():
    model = load_config(CONFIGS / "librispeech_paper.yaml").model
    assert (model.num_layers, model.d_model, model.num_heads, model.ffn_dim, model.frontend) == (
        36, 768, 4, 3072, "conv1d")
    assert (Conv1dSubsampling.kernel, Conv1dSubsampling.stride) == (7, 3)
