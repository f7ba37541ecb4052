"""Log-mel features and SpecAugment: lengths, padding invariance, normalization, masks."""

from __future__ import annotations

import pytest
import torch

from asr.config import load_config
from asr.data.features import NORM_EPS, LogMelFeatures
from asr.data.specaug import POLICIES, MaskPolicy, SpecAugment


def waves_and_lengths(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-padded noise-plus-tone utterances, one row per length."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(max(lengths)) / 16000
    waves = 0.1 * torch.randn(len(lengths), max(lengths), generator=g) + 0.3 * torch.sin(2 * torch.pi * 440 * t)
    lengths_t = torch.tensor(lengths)
    return waves * (t[None, :] * 16000 < lengths_t[:, None]), lengths_t


# ---------------------------------------------------------------------------------------------
# Log-mel


@pytest.mark.parametrize(
    "samples, frames",  # 25 ms windows every 10 ms at 16 kHz: whole windows only
    [(0, 0), (399, 0), (400, 1), (559, 1), (560, 2), (16000, 98), (16_000 * 15, 1498)],
)
def test_frame_count_is_whole_windows_inside_the_utterance(samples, frames):
    assert LogMelFeatures().frame_lengths(torch.tensor([samples])).item() == frames


def test_batch_gives_float32_features_and_frame_lengths():
    waves, lengths = waves_and_lengths([16000, 8000, 4000])
    feats, frame_lengths = LogMelFeatures(n_mels=40)(waves, lengths)
    assert feats.shape == (3, 98, 40) and feats.dtype == torch.float32 and feats.is_contiguous()
    assert frame_lengths.tolist() == [98, 48, 23] and frame_lengths.dtype == torch.int64


def test_features_stay_float32_under_bf16_autocast():
    waves, lengths = waves_and_lengths([8000, 6000])
    features = LogMelFeatures()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats, _ = features(waves.bfloat16(), lengths)
    reference, _ = features(waves.bfloat16().float(), lengths)
    assert feats.dtype == torch.float32
    torch.testing.assert_close(feats, reference)


@pytest.mark.parametrize("normalize", ["utterance", "none"])
def test_an_utterance_has_the_same_features_whatever_it_is_batched_with(normalize):
    features = LogMelFeatures(normalize=normalize)
    waves, lengths = waves_and_lengths([24000, 9000, 12345])
    batched, frame_lengths = features(waves, lengths)
    for i, length in enumerate(lengths.tolist()):
        alone, alone_frames = features(waves[i : i + 1, :length], lengths[i : i + 1])
        assert alone_frames.item() == frame_lengths[i].item()
        torch.testing.assert_close(batched[i, : frame_lengths[i]], alone[0], rtol=1e-5, atol=1e-5)


def test_normalization_uses_valid_frames_only_and_zeroes_padding():
    waves, lengths = waves_and_lengths([16000, 7000])
    feats, frame_lengths = LogMelFeatures()(waves, lengths)
    raw, _ = LogMelFeatures(normalize="none")(waves, lengths)
    for i, n in enumerate(frame_lengths.tolist()):
        valid = raw[i, :n]
        expected = (valid - valid.mean(0)) / torch.sqrt(valid.var(0, unbiased=False) + NORM_EPS)
        torch.testing.assert_close(feats[i, :n], expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(feats[i, :n].mean(0), torch.zeros(80), atol=1e-4, rtol=0)
        assert torch.all(feats[i, n:] == 0)


def test_unnormalized_features_are_log_mel_power():
    waves, lengths = waves_and_lengths([8000])
    feats, _ = LogMelFeatures(normalize="none")(waves, lengths)
    silent, _ = LogMelFeatures(normalize="none")(torch.zeros(1, 8000), lengths)
    assert feats.mean() > -10 and torch.all(silent == torch.log(torch.tensor(1e-10)))


def test_a_batch_shorter_than_one_window_gives_zero_frames():
    feats, frame_lengths = LogMelFeatures()(torch.randn(2, 300), torch.tensor([300, 100]))
    assert frame_lengths.tolist() == [0, 0] and torch.all(feats == 0)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"normalize": "global"}, "normalize"), ({"hop_ms": 30.0}, "hop"), ({"hop_ms": 0.01}, "hop")],
)
def test_impossible_feature_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LogMelFeatures(**kwargs)


def test_features_from_config():
    cfg = load_config(overrides=["features.n_mels=64", "features.hop_ms=20"])
    features = LogMelFeatures.from_config(cfg.features)
    assert (features.n_mels, features.win_samples, features.hop_samples) == (64, 400, 320)


# ---------------------------------------------------------------------------------------------
# SpecAugment


@pytest.mark.parametrize(
    "overrides, policy",
    [
        (["specaug.policy=LB"], MaskPolicy(1, 27, 1, 100, 1.0)),
        (["specaug.policy=LD"], MaskPolicy(2, 27, 2, 100, 1.0)),
        (["specaug.policy=none"], MaskPolicy(0, 0, 0, 0, 1.0)),
        (["specaug.policy=custom", "specaug.freq_masks=3", "specaug.freq_width=10",
          "specaug.time_masks=5", "specaug.time_width=40", "specaug.time_ratio=0.05"],
         MaskPolicy(3, 10, 5, 40, 0.05)),
    ],
)
def test_policy_presets_follow_park_et_al(overrides, policy):
    assert SpecAugment.from_config(load_config(overrides=overrides).specaug).policy == policy


def masked_spans(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From masks applied to all-ones features: fully masked frames [B, T] and channels [B, C]."""
    zero = out == 0
    return zero.all(dim=2), zero.all(dim=1)


def test_time_masks_stay_inside_valid_frames_and_within_width_bounds():
    augment = SpecAugment(freq_masks=2, freq_width=27, time_masks=3, time_width=30, time_ratio=0.2)
    frame_lengths = torch.tensor([300, 120, 40, 5, 0] * 40)
    feats = torch.ones(len(frame_lengths), 300, 80)  # ones also past the lengths: masks must not go there
    out = augment(feats, frame_lengths, generator=torch.Generator().manual_seed(1))
    frames, channels = masked_spans(out)
    positions = torch.arange(300)
    assert not torch.any(frames & (positions >= frame_lengths[:, None]))
    bound = torch.minimum(torch.tensor(30), (0.2 * frame_lengths).floor().long())
    assert torch.all(frames.sum(1) <= 3 * bound)
    assert torch.all(channels.sum(1) <= 2 * 27)
    assert frames[frame_lengths == 300].sum(1).float().mean() > 20  # masks are actually drawn


def test_masks_differ_between_utterances_of_one_batch():
    out = SpecAugment.from_policy("LD")(torch.ones(8, 200, 80), torch.full((8,), 200),
                                        generator=torch.Generator().manual_seed(0))
    frames, channels = masked_spans(out)
    assert len({tuple(row.tolist()) for row in channels}) > 1 and len({tuple(row.tolist()) for row in frames}) > 1


def test_same_generator_seed_gives_the_same_masks():
    augment = SpecAugment.from_policy("LD")
    feats, lengths = torch.randn(4, 150, 80), torch.tensor([150, 90, 60, 10])
    runs = [augment(feats, lengths, generator=torch.Generator().manual_seed(seed)) for seed in (5, 5, 6)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_no_masks_leave_features_unchanged():
    feats = torch.randn(2, 50, 80)
    assert SpecAugment.from_policy("none")(feats, torch.tensor([50, 20])) is feats


@pytest.mark.parametrize(
    "kwargs, message",
    [({"freq_masks": -1}, ">= 0"), ({"time_ratio": 0.0}, "time_ratio"), ({"time_ratio": 1.5}, "time_ratio")],
)
def test_impossible_specaugment_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpecAugment(**kwargs)


def test_unknown_policy_names_the_choices():
    with pytest.raises(ValueError, match="LB, LD, none"):
        SpecAugment.from_policy("LF")
    assert set(POLICIES) == {"LB", "LD", "none"}


# ---------------------------------------------------------------------------------------------
# On the GPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_features_and_masks_run_on_the_gpu_without_host_syncs():
    waves, lengths = waves_and_lengths([16000, 9000, 4000])
    features = LogMelFeatures()
    expected, expected_lengths = features(waves, lengths)
    cuda_features, augment = LogMelFeatures().cuda(), SpecAugment.from_policy("LD")
    waves, lengths = waves.cuda(), lengths.cuda()
    generator = torch.Generator(device="cuda").manual_seed(0)
    torch.cuda.set_sync_debug_mode("error")  # any device-to-host synchronisation raises
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            feats, frame_lengths = cuda_features(waves, lengths)
            masked = augment(feats, frame_lengths, generator=generator)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert feats.dtype == masked.dtype == torch.float32
    assert torch.equal(frame_lengths.cpu(), expected_lengths)
    torch.testing.assert_close(feats.cpu(), expected, atol=2e-3, rtol=2e-3)
    assert 0 < (masked == 0).float().mean().item() < 1
